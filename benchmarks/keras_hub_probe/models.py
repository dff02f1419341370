"""Tiny KerasHub models (keras-hub 0.32) for `check.py`: each builder returns `(model, inputs)`, a model
built from constructor arguments (no preset, nothing downloaded) and a batch of inputs for it."""
import numpy as np


def img(h=32, w=32, c=3, b=2):
    return np.random.default_rng(0).uniform(0, 1, (b, h, w, c)).astype("float32")


def toks(b=2, s=8, vocab=50, extra=None):
    rng = np.random.default_rng(0)
    d = {"token_ids": rng.integers(1, vocab, (b, s)).astype("int32"),
         "padding_mask": np.ones((b, s), "int32")}
    if extra:
        d.update(extra)
    return d


def _m():
    import keras_hub
    return keras_hub.models


# ---------------------------------------------------------------- vision backbones
def resnet_basic():
    m = _m()
    return m.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
                            stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
                            image_shape=(32, 32, 3)), img()


def resnet_bottleneck_v2():
    m = _m()
    return m.ResNetBackbone(input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
                            stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
                            use_pre_activation=True, image_shape=(32, 32, 3)), img()


def resnet_vd():
    m = _m()
    return m.ResNetBackbone(input_conv_filters=[8, 8, 64], input_conv_kernel_sizes=[3, 3, 3],
                            stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
                            block_type="bottleneck_block_vd", image_shape=(32, 32, 3)), img()


def efficientnet():
    m = _m()
    return m.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0] * 3, stackwise_depth_coefficients=[1.0] * 3,
        stackwise_kernel_sizes=[3, 3, 3], stackwise_num_repeats=[1, 1, 1],
        stackwise_input_filters=[8, 8, 16], stackwise_output_filters=[8, 16, 16],
        stackwise_expansion_ratios=[1, 2, 2], stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25],
        stackwise_strides=[1, 2, 1], stackwise_block_types=["fused", "fused", "unfused"],
        stackwise_force_input_filters=[0, 0, 0], stackwise_nores_option=[False, False, False],
        dropout=0.0, num_features=32, input_shape=(32, 32, 3), min_depth=None,
        include_stem_padding=True, use_depth_divisor_as_min_depth=True), img()


def efficientnet_v1():
    m = _m()
    return m.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0] * 2, stackwise_depth_coefficients=[1.0] * 2,
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 2],
        stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 2], stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2], stackwise_block_types=["v1", "v1"],
        stackwise_force_input_filters=[0, 0], stackwise_nores_option=[False, False],
        dropout=0.0, num_features=32, input_shape=(32, 32, 3)), img()


def vit():
    m = _m()
    return m.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=8,
                         mlp_dim=16), img(16, 16)


def mit():
    m = _m()
    return m.MiTBackbone(layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
                         layerwise_sr_ratios=[4, 2], max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
                         layerwise_strides=[4, 2], image_shape=(32, 32, 3), hidden_dims=[8, 16]), img()


def cspnet():
    m = _m()
    return m.CSPNetBackbone(stem_filters=8, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 1],
                            stackwise_strides=2, stackwise_num_filters=[8, 16], block_type="dark_block", stage_type="dark",
                            image_shape=(32, 32, 3)), img()


def cspnet_bottleneck():
    m = _m()
    return m.CSPNetBackbone(stem_filters=8, stem_kernel_size=3, stem_strides=2, stackwise_depth=[1, 1],
                            stackwise_strides=2, stackwise_num_filters=[16, 32], block_type="bottleneck_block",
                            stage_type="cs3", bottle_ratio=[0.5], block_ratio=[1.0], expand_ratio=[2.0],
                            image_shape=(32, 32, 3)), img()


def densenet():
    m = _m()
    return m.DenseNetBackbone(stackwise_num_repeats=[1, 1], image_shape=(32, 32, 3), growth_rate=4), img()


def mobilenet():
    m = _m()
    return m.MobileNetBackbone(
        stackwise_expansion=[[16], [24, 24]], stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[8], [16, 16]], stackwise_kernel_size=[[3], [5, 5]],
        stackwise_num_strides=[[2], [2, 1]], stackwise_se_ratio=[[None], [0.25, 0.25]],
        stackwise_activation=[["relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1], [2, 2]], output_num_filters=32, depthwise_filters=8, depthwise_stride=2,
        depthwise_residual=False, last_layer_filter=32, squeeze_and_excite=0.5, image_shape=(32, 32, 3),
        input_num_filters=8), img()


def vgg():
    m = _m()
    return m.VGGBackbone(stackwise_num_repeats=[1, 2], stackwise_num_filters=[4, 8], image_shape=(28, 28, 3)), img(28, 28)


def deit():
    m = _m()
    return m.DeiTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=8,
                          intermediate_dim=16), img(16, 16)


def dinov2():
    m = _m()
    return m.DINOV2Backbone(patch_size=4, num_layers=2, hidden_dim=8, num_heads=2, intermediate_dim=16,
                            image_shape=(16, 16, 3), position_embedding_shape=(16, 16, 3)), {"images": img(16, 16)}


def dinov2_swiglu():
    m = _m()
    return m.DINOV2Backbone(patch_size=4, num_layers=2, hidden_dim=8, num_heads=2, intermediate_dim=16,
                            use_swiglu_ffn=True, num_register_tokens=2, image_shape=(16, 16, 3),
                            position_embedding_shape=(16, 16, 3)), {"images": img(16, 16)}


def dinov3():
    m = _m()
    return m.DINOV3Backbone(patch_size=4, num_layers=2, hidden_dim=8, num_heads=2, intermediate_dim=16,
                            image_shape=(16, 16, 3)), {"pixel_values": img(16, 16)}


def clip_vision():
    m = _m()
    return m.CLIPVisionEncoder(patch_size=4, hidden_dim=8, num_layers=2, num_heads=2, intermediate_dim=16,
                               image_shape=(16, 16, 3)), img(16, 16)


def clip_text():
    m = _m()
    return m.CLIPTextEncoder(vocabulary_size=50, embedding_dim=8, hidden_dim=8, num_layers=2, num_heads=2,
                             intermediate_dim=16, max_sequence_length=8), {"token_ids": toks()["token_ids"]}


def clip():
    m = _m()
    v = m.CLIPVisionEncoder(patch_size=4, hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=16,
                            image_shape=(16, 16, 3))
    t = m.CLIPTextEncoder(vocabulary_size=50, embedding_dim=8, hidden_dim=8, num_layers=1, num_heads=2,
                          intermediate_dim=16, max_sequence_length=8)
    return m.CLIPBackbone(v, t, projection_dim=8), {"images": img(16, 16), "token_ids": toks()["token_ids"]}


def siglip_vision():
    m = _m()
    return m.SigLIPVisionEncoder(patch_size=4, hidden_dim=8, num_layers=2, num_heads=2, intermediate_dim=16,
                                 image_shape=(16, 16, 3)), img(16, 16)


def siglip_text():
    m = _m()
    return m.SigLIPTextEncoder(vocabulary_size=50, embedding_dim=8, hidden_dim=8, num_layers=2, num_heads=2,
                               intermediate_dim=16, max_sequence_length=8), {"token_ids": toks()["token_ids"]}


def swin():
    m = _m()
    return m.SwinTransformerBackbone(image_shape=(16, 16, 3), embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                     window_size=2, patch_size=2, mlp_ratio=2.0, drop_path=0.0), img(16, 16)


def xception():
    m = _m()
    return m.XceptionBackbone(stackwise_conv_filters=[[8, 8], [16, 16], [16, 16]],
                              stackwise_pooling=[False, True, False], image_shape=(32, 32, 3)), img()


def hgnetv2():
    m = _m()
    return m.HGNetV2Backbone(depths=[1, 1], embedding_size=8, hidden_sizes=[16, 16], stem_channels=[3, 8, 8],
                             hidden_act="relu", use_learnable_affine_block=True,
                             stackwise_stage_filters=[(8, 8, 16, 1, 2, 3), (16, 8, 16, 1, 2, 3)],
                             apply_downsample=[False, True], use_lightweight_conv_block=[False, True],
                             image_shape=(32, 32, 3)), img()


def vitdet():
    m = _m()
    return m.ViTDetBackbone(hidden_size=8, num_layers=2, intermediate_dim=16, num_heads=2,
                            global_attention_layer_indices=[1], image_shape=(16, 16, 3), patch_size=4,
                            num_output_channels=8, window_size=2), img(16, 16)


# ---------------------------------------------------------------- vision tasks
def resnet_classifier():
    m = _m()
    bb, x = resnet_basic()
    return m.ResNetImageClassifier(backbone=bb, num_classes=3), x


def image_classifier_generic():
    m = _m()
    bb, x = densenet()
    return m.ImageClassifier(backbone=bb, num_classes=3), x


def efficientnet_classifier():
    m = _m()
    bb, x = efficientnet()
    return m.EfficientNetImageClassifier(backbone=bb, num_classes=3), x


def deit_classifier():
    m = _m()
    bb, x = deit()
    return m.DeiTImageClassifier(backbone=bb, num_classes=3), x


def mit_classifier():
    m = _m()
    bb, x = mit()
    return m.MiTImageClassifier(backbone=bb, num_classes=3), x


def vgg_classifier():
    m = _m()
    bb, x = vgg()
    return m.VGGImageClassifier(backbone=bb, num_classes=3, pooling_hidden_dim=16), x


def mobilenet_classifier():
    m = _m()
    bb, x = mobilenet()
    return m.MobileNetImageClassifier(backbone=bb, num_classes=3), x


def segformer():
    m = _m()
    enc, x = mit()
    return m.SegFormerBackbone(image_encoder=enc, projection_filters=8), x


def segformer_segmenter():
    m = _m()
    bb, x = segformer()
    return m.SegFormerImageSegmenter(backbone=bb, num_classes=3), x


# ---------------------------------------------------------------- text backbones / tasks
def bert_classifier():
    m = _m()
    bb = m.BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                        max_sequence_length=16)
    return m.BertTextClassifier(backbone=bb, num_classes=3, preprocessor=None), toks(extra={"segment_ids": np.zeros((2, 8), "int32")})


def electra():
    m = _m()
    return m.ElectraBackbone(vocab_size=50, num_layers=2, num_heads=2, hidden_dim=8, embedding_dim=4,
                             intermediate_dim=16, max_sequence_length=16), toks(extra={"segment_ids": np.zeros((2, 8), "int32")})


def deberta_v3():
    m = _m()
    return m.DebertaV3Backbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                               max_sequence_length=16, bucket_size=4), toks()


def deberta_v3_classifier():
    m = _m()
    bb, x = deberta_v3()
    return m.DebertaV3TextClassifier(backbone=bb, num_classes=3, preprocessor=None), x


def albert():
    m = _m()
    return m.AlbertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, embedding_dim=4, hidden_dim=8,
                            intermediate_dim=16, num_groups=1, num_inner_repetitions=1, max_sequence_length=16), \
        toks(extra={"segment_ids": np.zeros((2, 8), "int32")})


def albert_classifier():
    m = _m()
    bb, x = albert()
    return m.AlbertTextClassifier(backbone=bb, num_classes=3, preprocessor=None), x


def t5():
    m = _m()
    rng = np.random.default_rng(1)
    return m.T5Backbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                        key_value_dim=4), {
        "encoder_token_ids": rng.integers(1, 50, (2, 8)).astype("int32"),
        "encoder_padding_mask": np.ones((2, 8), "int32"),
        "decoder_token_ids": rng.integers(1, 50, (2, 6)).astype("int32"),
        "decoder_padding_mask": np.ones((2, 6), "int32")}


def bart():
    m = _m()
    rng = np.random.default_rng(1)
    return m.BartBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                          max_sequence_length=16), {
        "encoder_token_ids": rng.integers(1, 50, (2, 8)).astype("int32"),
        "encoder_padding_mask": np.ones((2, 8), "int32"),
        "decoder_token_ids": rng.integers(1, 50, (2, 6)).astype("int32"),
        "decoder_padding_mask": np.ones((2, 6), "int32")}


def bart_seq2seq():
    m = _m()
    bb, x = bart()
    return m.BartSeq2SeqLM(backbone=bb, preprocessor=None), x


def t5_seq2seq():
    m = _m()
    bb, x = t5()
    return m.T5Seq2SeqLM(backbone=bb, preprocessor=None), x


def whisper():
    m = _m()
    rng = np.random.default_rng(1)
    return m.WhisperBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                             num_mels=8, max_encoder_sequence_length=16, max_decoder_sequence_length=8), {
        "encoder_features": rng.normal(size=(2, 16, 8)).astype("float32"),
        "decoder_token_ids": rng.integers(1, 50, (2, 8)).astype("int32"),
        "decoder_padding_mask": np.ones((2, 8), "int32")}


def xlnet():
    m = _m()
    return m.XLNetBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16), \
        toks(extra={"segment_ids": np.zeros((2, 8), "int32")})


def fnet():
    m = _m()
    return m.FNetBackbone(vocabulary_size=50, num_layers=2, hidden_dim=8, intermediate_dim=16,
                          max_sequence_length=16), {"token_ids": toks()["token_ids"], "segment_ids": np.zeros((2, 8), "int32")}


def bloom():
    m = _m()
    return m.BloomBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16), toks()


def gpt_neox():
    m = _m()
    return m.GPTNeoXBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                             max_sequence_length=16, rotary_percentage=0.5), toks()


def xlm_roberta():
    m = _m()
    return m.XLMRobertaBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                                max_sequence_length=16), toks()


def esm2():
    m = _m()
    return m.ESM2Backbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                          max_sequence_length=16), {"token_ids": toks()["token_ids"]}


def roformer_v2():
    m = _m()
    return m.RoformerV2Backbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                                head_size=4), toks(extra={"segment_ids": np.zeros((2, 8), "int32")})


def mixtral():
    m = _m()
    return m.MixtralBackbone(vocabulary_size=50, num_layers=2, num_query_heads=2, hidden_dim=8, intermediate_dim=16,
                             num_key_value_heads=1, num_experts=2, top_k=1), toks()


def qwen3():
    m = _m()
    return m.Qwen3Backbone(vocabulary_size=50, num_layers=2, num_query_heads=2, num_key_value_heads=1, head_dim=4,
                           hidden_dim=8, intermediate_dim=16), toks()


def gpt2_causal_lm():
    m = _m()
    bb = m.GPT2Backbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                        max_sequence_length=16)
    return m.GPT2CausalLM(backbone=bb, preprocessor=None), toks()


def moonshine():
    m = _m()
    rng = np.random.default_rng(1)
    return m.MoonshineBackbone(vocabulary_size=50, filter_dim=8, encoder_num_layers=1, decoder_num_layers=1,
                               hidden_dim=8, intermediate_dim=16, encoder_num_heads=2, decoder_num_heads=2), {
        "encoder_input_values": rng.normal(size=(2, 3200, 1)).astype("float32"),
        "encoder_padding_mask": np.ones((2, 3200), "bool"),
        "decoder_token_ids": rng.integers(1, 50, (2, 6)).astype("int32"),
        "decoder_padding_mask": np.ones((2, 6), "bool")}


def edrec():
    m = _m()
    rng = np.random.default_rng(1)
    return m.EdRecBackbone(vocab_size=50, num_layers_enc=1, num_layers_dec=1, hidden_dim=8, intermediate_dim=16,
                           num_heads=2), {
        "encoder_token_ids": rng.integers(1, 50, (2, 8)).astype("int32"),
        "encoder_padding_mask": np.ones((2, 8), "int32"),
        "decoder_token_ids": rng.integers(1, 50, (2, 6)).astype("int32"),
        "decoder_padding_mask": np.ones((2, 6), "int32")}


# ---------------------------------------------------------------- more decoders, encoders and a segmenter
def llama():
    m = _m()
    return m.LlamaBackbone(vocabulary_size=50, num_layers=2, num_query_heads=2, hidden_dim=8, intermediate_dim=16,
                           num_key_value_heads=1), toks()


def llama3():
    m = _m()
    return m.Llama3Backbone(vocabulary_size=50, num_layers=2, num_query_heads=2, hidden_dim=8, intermediate_dim=16,
                            num_key_value_heads=1), toks()


def gemma():
    m = _m()
    return m.GemmaBackbone(vocabulary_size=50, num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=8,
                           intermediate_dim=16, head_dim=4), toks()


def gemma3_text():
    m = _m()
    return m.Gemma3Backbone(vocabulary_size=50, image_size=16, num_layers=2, num_query_heads=2, num_key_value_heads=1,
                            hidden_dim=8, intermediate_dim=16, head_dim=4, vision_encoder=None), toks()


def mistral():
    m = _m()
    return m.MistralBackbone(vocabulary_size=50, num_layers=2, num_query_heads=2, hidden_dim=8, intermediate_dim=16,
                             num_key_value_heads=1), toks()


def qwen2():
    m = _m()
    return m.Qwen2Backbone(vocabulary_size=50, num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=8,
                           intermediate_dim=16), toks()


def phi3():
    m = _m()
    return m.Phi3Backbone(vocabulary_size=50, num_layers=2, hidden_dim=8, intermediate_dim=16, num_query_heads=2,
                          num_key_value_heads=1), toks()


def opt():
    m = _m()
    return m.OPTBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                         max_sequence_length=16), toks()


def distil_bert():
    m = _m()
    return m.DistilBertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                                max_sequence_length=16), toks()


def falcon():
    m = _m()
    return m.FalconBackbone(vocabulary_size=50, num_layers=2, num_attention_heads=2, hidden_dim=8,
                            intermediate_dim=16), toks()


def deeplab_v3():
    m = _m()
    encoder = m.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
                               stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
                               image_shape=(32, 32, 3))
    return m.DeepLabV3Backbone(image_encoder=encoder, spatial_pyramid_pooling_key="P3", upsampling_size=4,
                               dilation_rates=[1, 2], projection_filters=8), img()


BUILDERS = {k: v for k, v in list(globals().items()) if callable(v) and not k.startswith("_") and k not in ("img", "toks")}
