"""The test corpus of plain Keras models for reconstruct/fold."""

import keras
import numpy as np


def mlp():
    return keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8, activation="relu"),
         keras.layers.Dense(3)],
        name="mlp",
    )


def small_cnn():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x), name="small_cnn")


def residual_block():
    inputs = keras.Input((8, 8, 6))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same")(x)
    x = keras.layers.Add()([x, inputs])
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="residual_block")


def multi_input_output():
    image = keras.Input((6, 6, 2), name="image")
    vector = keras.Input((5,), name="vector")
    a = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    b = keras.layers.Dense(4, activation="tanh")(vector)
    merged = keras.layers.Concatenate()([a, b])
    return keras.Model(
        [image, vector], [keras.layers.Dense(3, name="class")(merged), keras.layers.Dense(1, name="value")(merged)],
        name="multi_io",
    )


def shared_dense():
    left, right = keras.Input((7,)), keras.Input((7,))
    shared = keras.layers.Dense(5, activation="relu", name="shared")
    merged = keras.layers.Add()([shared(left), shared(right)])
    return keras.Model([left, right], keras.layers.Dense(2)(merged), name="shared_dense")


def nested():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu")], name="inner")
    inputs = keras.Input((6,))
    x = inner(inputs)
    inner_functional_inputs = keras.Input((5,))
    inner_functional = keras.Model(
        inner_functional_inputs, keras.layers.Dense(4, activation="relu")(inner_functional_inputs),
        name="inner_functional",
    )
    x = inner_functional(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="nested")


def lstm():
    return keras.Sequential(
        [keras.Input((5, 4)), keras.layers.LSTM(6, return_sequences=True), keras.layers.GRU(5),
         keras.layers.Dense(3)],
        name="lstm",
    )


def raw_operations():
    """Raw `keras.ops` calls in the graph (`x + y`, `x[:, 0:2]`, a cast): operations with no weights."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(6, activation="tanh")(inputs)
    x = keras.layers.Dense(4)(h + inputs)
    x = keras.ops.cast(x[:, 0:2] * 2.0, "float32")
    return keras.Model(inputs, keras.layers.Dense(3)(x), name="raw_operations")


CORPUS = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "residual_block": residual_block,
    "multi_input_output": multi_input_output,
    "shared_dense": shared_dense,
    "nested": nested,
    "lstm": lstm,
    "raw_operations": raw_operations,
}


# Models that build from constructor arguments (weights=None, no downloads) with real-world graphs: raw
# `keras.ops` calls between layers, depthwise and grouped convolutions, composite layers, dict inputs and
# outputs, nested models. Each entry: a builder and a function `(model, batch, seed) -> inputs`.


def image_inputs(model, batch=4, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (batch,) + tuple(model.inputs[0].shape[1:])).astype("float32")


def token_inputs(model, batch=4, seed=0):
    """BERT-style inputs: token ids, segment ids and a padding mask with padded tails."""
    rng = np.random.default_rng(seed)
    length = HUB_SEQUENCE_LENGTH
    lengths = rng.integers(2, length + 1, batch)
    padding_mask = np.arange(length)[None, :] < lengths[:, None]
    token_ids = rng.integers(1, HUB_VOCABULARY, (batch, length)) * padding_mask
    segment_ids = (np.arange(length)[None, :] >= lengths[:, None] // 2) * padding_mask
    return {"token_ids": token_ids.astype("int32"), "segment_ids": segment_ids.astype("int32"),
            "padding_mask": padding_mask.astype("int32")}


def decoder_token_inputs(model, batch=4, seed=0):
    """Decoder-only language model inputs: token ids and a padding mask."""
    inputs = token_inputs(model, batch, seed)
    return {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]}


def sequence_inputs(model, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + tuple(model.inputs[0].shape[1:])).astype("float32")


HUB_VOCABULARY = 50
HUB_SEQUENCE_LENGTH = 8


def mobilenet_v3_small():
    return keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), alpha=0.75, include_top=False, pooling="avg",
        include_preprocessing=False,
    )


def convnext_tiny():
    return keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), include_top=False, pooling="avg")


def bert_backbone():
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=HUB_VOCABULARY, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=HUB_SEQUENCE_LENGTH,
    )


def bert_text_classifier():
    import keras_hub

    return keras_hub.models.BertTextClassifier(backbone=bert_backbone(), num_classes=3, preprocessor=None)


def gemma_backbone():
    """KerasHub's Gemma: decoder blocks with query/key/value and gated-MLP EinsumDense layers inside (whose
    first block's input Keras's shape inference marks sparse)."""
    import keras_hub

    return keras_hub.models.GemmaBackbone(
        vocabulary_size=HUB_VOCABULARY, num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=8,
        intermediate_dim=16, head_dim=4,
    )


def mistral_backbone():
    """KerasHub's Mistral: grouped-query attention and a gated MLP inside each decoder layer."""
    import keras_hub

    return keras_hub.models.MistralBackbone(
        vocabulary_size=HUB_VOCABULARY, num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=8,
        intermediate_dim=16,
    )


def transformer_decoder():
    import keras_hub

    inputs = keras.Input((6, 8))
    x = keras.layers.Dense(8, activation="relu", name="embed")(inputs)
    x = keras_hub.layers.TransformerDecoder(intermediate_dim=16, num_heads=2, name="decoder")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x[:, -1]), name="transformer_decoder")


def vit_image_classifier():
    """A KerasHub ViT classifier: its backbone's `ViTPatchingAndEmbedding` cannot be rebuilt from its own
    config as it is (keras-hub 0.32 puts derived values in it); `keras_sngd.config_repair` repairs it."""
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=1, num_heads=2,
                                            hidden_dim=8, mlp_dim=16)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=3, preprocessor=None)


CONSTRUCTOR_CORPUS = {
    "MobileNetV3Small": (mobilenet_v3_small, image_inputs),
    "ConvNeXtTiny": (convnext_tiny, image_inputs),
    "BertBackbone": (bert_backbone, token_inputs),
    "BertTextClassifier": (bert_text_classifier, token_inputs),
    "GemmaBackbone": (gemma_backbone, decoder_token_inputs),
    "MistralBackbone": (mistral_backbone, decoder_token_inputs),
    "TransformerDecoder": (transformer_decoder, sequence_inputs),
    "ViTImageClassifier": (vit_image_classifier, image_inputs),
}
