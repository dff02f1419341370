"""Probe `reconstruct`, training, `fold` and `.keras` files on about eighty small models the tests do not hold.

Each model (random data, 64 examples, batch 16) runs in a new process, on the backend of `KERAS_BACKEND`:

1. `keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 2, ...})`: the same outputs as the
   plain model (relative difference at most 1e-5);
2. `fit` with `SGD(0.0)`, two epochs: outputs unchanged through the refreshes (1e-4; compared with the
   plain model fitted the same way, so that BatchNormalization's moving statistics and
   SpectralNormalization's power iteration move alike), and at least one refresh;
3. two more epochs at learning rate 0.05: finite losses;
4. `keras_sngd.fold`: no keras-sngd layer left, the same outputs (1e-4);
5. both models saved to `.keras` and loaded: the same outputs (1e-6), and the loaded SNGD model trains on
   and folds;
6. every trainable kernel of the plain model is listed in the report, as whitened or skipped with a reason.

Tolerances are 100 times larger under mixed float16 and 300 times under mixed bfloat16 (their rounding).
A check that the plain model itself cannot pass on the backend (Keras cannot reload a Python lambda; a
stateful RNN's `fit` fails on PyTorch) is reported as "n/a", not as SNGD's failure.

    python benchmarks/model_probe.py                          # every model, TensorFlow
    KERAS_BACKEND=jax python benchmarks/model_probe.py --subset mha_mask,convlstm2d
    PROBE_LF_ARGS='{"center": true}' python benchmarks/model_probe.py  # extra LocalFisher arguments
    PROBE_POLICY=mixed_float16 python benchmarks/model_probe.py --fuzz 0:20  # random models, mixed precision
    python benchmarks/model_probe.py --one gqa                # one model, in this process, verbose
    python benchmarks/model_probe.py --fuzz 0:80              # random models drawn from seeds 0-79
                                                              # (benchmarks/graph_fuzz.py), same checks
    python benchmarks/model_probe.py --fuzz deep_0:30         # deeper random models (10 to 16 steps)

It prints one row per model (PASS, or FAIL with the failed checks); `--logs DIR` keeps each model's full
output. Results: `benchmarks/results/model_probe/`.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LF_ARGS = {"update_every": 2, **json.loads(os.environ.get("PROBE_LF_ARGS", "{}"))}
POLICY = os.environ.get("PROBE_POLICY")  # a global dtype policy for the random models (--fuzz)
FUZZ_PREFIXES = ("fuzz_", "deep_fuzz_")  # names of random models: benchmarks/graph_fuzz.py
WORK = tempfile.mkdtemp(prefix="model_probe_")

MODEL_NAMES = [
    "conv2d_transpose", "conv3d", "conv1d_dilated_causal", "depthwise_separable_1d", "conv3d_transpose",
    "dense_nd", "einsum_unusual", "embedding_gap", "multi_io_dict", "lambda_concat", "shared_submodel",
    "sequential_in_functional", "time_distributed", "bigru_merge_none", "convlstm2d", "norms_between_dense",
    "dense_nobias_constraint", "mixed_float16", "attention_layers", "mha_mask", "residual_mlp",
    "spectral_norm_dropout", "custom_weight_layer", "mobilenetv3_head", "loaded_from_file",
    "lstm_encoder_decoder", "masked_lstm", "conv2d_channels_first", "fanout_dense", "permute_reshape",
    "lora_dense", "quantized_int8", "einsum_ellipsis", "stateful_rnn", "gru_variants", "bilstm_return_state",
    "mha_cross_causal", "gqa", "nested_multi_output", "input_fanout_mixed", "output_is_whitened",
    "seq_in_seq", "normalization_adapted", "conv_regularized_strided", "shared_td",
    "float64_policy", "mixed_bfloat16", "masking_lstm", "wide_dense_lowrank", "nobias_everything",
    "hub_albert", "hub_transformer_encoder_layer", "einsum_noncontract_last", "rnn_stacked_return_state",
    "unet_skip_concat", "siamese_shared_encoder", "transformer_block_causal", "conv1d_gru_attention_pool",
    # Added 2026-12-03: layer kinds none of the above holds.
    "spectral_norm_wrappers", "group_unit_norm", "discretization_embedding", "additive_attention",
    "gru_reset_after_false", "einsum_bias_axes", "nested_sequential_twice", "mha_2d_axes", "conv_lstm1d",
    "rnn_return_state", "time_distributed_conv1d", "float64_layer", "constraints_unitnorm",
    "separable_conv2d_pool", "prelu_shared_axes", "dot_normalize_rmsnorm", "augment_resize_conv",
    "category_encoding", "conv_lstm3d", "mask_zero_pool", "mel_spectrogram_conv1d", "noise_dropout_conv1d",
]


def build(name):
    if name.startswith(FUZZ_PREFIXES):
        from benchmarks.graph_fuzz import random_model

        if POLICY:
            import keras

            keras.mixed_precision.set_global_policy(POLICY)

        deep = name.startswith("deep_")
        return random_model(int(name.rsplit("_", 1)[1]), steps=(10, 16) if deep else (3, 8))
    import keras
    from keras import layers as L
    import numpy as np
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    N = 64

    def rnd(*shape):
        return rng.standard_normal((N,) + shape).astype("float32")

    loss = "mse"
    if name == "conv2d_transpose":
        i = keras.Input((5, 5, 3))
        x = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu")(i)
        x = L.Conv2D(3, 3, activation="relu")(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 5, 3)
    elif name == "conv3d":
        i = keras.Input((5, 5, 5, 2))
        x = L.Conv3D(4, 2, activation="relu")(i)
        x = L.Conv3D(3, 2, strides=2, padding="same")(x)
        x = L.GlobalAveragePooling3D()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 5, 5, 2)
    elif name == "conv3d_transpose":
        i = keras.Input((3, 3, 3, 2))
        x = L.Conv3DTranspose(3, 2, strides=2, activation="tanh")(i)
        x = L.Conv1D if False else x
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(3, 3, 3, 2)
    elif name == "conv1d_dilated_causal":
        i = keras.Input((12, 3))
        x = L.Conv1D(4, 3, dilation_rate=2, padding="causal", activation="relu")(i)
        x = L.Conv1D(4, 2, strides=2, padding="valid")(x)
        x = L.Conv1DTranspose(3, 3, strides=2, padding="same")(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(12, 3)
    elif name == "depthwise_separable_1d":
        i = keras.Input((10, 4))
        x = L.SeparableConv1D(4, 3, depth_multiplier=2, activation="relu")(i)
        x = L.DepthwiseConv1D(3, depth_multiplier=1)(x)
        x = L.Conv1D(4, 1, groups=2)(x)
        x = L.GlobalAveragePooling1D()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(10, 4)
    elif name == "dense_nd":
        i = keras.Input((3, 4, 5))
        x = L.Dense(6, activation="tanh")(i)  # 4-D input
        x = L.Reshape((12, 6))(x)
        x = L.Dense(3)(x)  # 3-D input
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(3, 4, 5)
    elif name == "einsum_unusual":
        i = keras.Input((5, 4))
        x = L.EinsumDense("abc,cd->abd", output_shape=(None, 6), bias_axes="d", activation="tanh")(i)
        x = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3), bias_axes="de")(x)
        x = L.Reshape((5, 6))(x)
        x = L.Flatten()(x)
        x = L.EinsumDense("ab,bcd->acd", output_shape=(2, 3))(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 4)
    elif name == "einsum_noncontract_last":
        # contracts a non-last axis, and a two-axis contraction: should be skipped with a reason or handled
        i = keras.Input((5, 4))
        x = L.EinsumDense("abc,bd->adc", output_shape=(3, 4))(i)
        x = L.EinsumDense("abc,bcd->ad", output_shape=(6,), bias_axes="d")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 4)
    elif name == "embedding_gap":
        i = keras.Input((7,), dtype="int32")
        x = L.Embedding(20, 8)(i)
        x = L.GlobalAveragePooling1D()(x)
        x = L.Dense(6, activation="relu")(x)
        m = keras.Model(i, L.Dense(3)(x))
        xs = rng.integers(0, 20, (N, 7)).astype("int32")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        ys = rng.integers(0, 3, (N,)).astype("int32")
        return m, xs, ys, loss
    elif name == "multi_io_dict":
        a = keras.Input((6, 3), name="seq")
        b = keras.Input((4,), name="vec")
        ha = L.GlobalMaxPooling1D()(L.Conv1D(4, 2, activation="relu")(a))
        hb = L.Dense(4, activation="relu")(b)
        h = L.Concatenate()([ha, hb])
        out1 = L.Dense(3, name="cls")(h)
        out2 = L.Dense(1, name="reg")(L.Dense(3, activation="tanh")(hb))
        m = keras.Model({"seq": a, "vec": b}, {"cls": out1, "reg": out2})
        xs = {"seq": rnd(6, 3), "vec": rnd(4)}
        ys = {"cls": rng.integers(0, 3, (N,)).astype("int32"), "reg": rnd(1)}
        loss = {"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"}
        return m, xs, ys, loss
    elif name == "lambda_concat":
        i = keras.Input((5,))
        x = L.Dense(4, activation="tanh")(i)
        x = L.Lambda(lambda t: keras.ops.concatenate([t, t ** 2], axis=-1))(x)
        x = L.Dense(4)(x)
        x = L.Lambda(lambda t: keras.ops.sin(t))(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5)
    elif name == "shared_submodel":
        si = keras.Input((4,))
        sub = keras.Model(si, L.Dense(3, activation="relu")(L.Dense(5, activation="tanh")(si)), name="sub")
        a = keras.Input((4,))
        b = keras.Input((4,))
        h = L.Concatenate()([sub(a), sub(b)])
        m = keras.Model([a, b], L.Dense(2)(h))
        xs = [rnd(4), rnd(4)]
    elif name == "sequential_in_functional":
        seq = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, activation="relu"), L.Flatten(),
                                L.Dense(5, activation="relu")], name="seq")
        i = keras.Input((6, 6, 2))
        m = keras.Model(i, L.Dense(2)(seq(i)))
        xs = rnd(6, 6, 2)
    elif name == "time_distributed":
        i = keras.Input((3, 6, 6, 2))
        x = L.TimeDistributed(L.Conv2D(3, 3, activation="relu"))(i)
        x = L.TimeDistributed(L.Flatten())(x)
        x = L.TimeDistributed(L.Dense(4, activation="tanh"))(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(3, 6, 6, 2)
    elif name == "bigru_merge_none":
        i = keras.Input((5, 3))
        fwd, bwd = L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode=None)(i)
        x = L.Add()([fwd, bwd])
        x = L.GRU(3)(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 3)
    elif name == "convlstm2d":
        i = keras.Input((3, 5, 5, 2))
        x = L.ConvLSTM2D(3, 3, padding="same", return_sequences=False)(i)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(3, 5, 5, 2)
    elif name == "norms_between_dense":
        i = keras.Input((6,))
        x = L.Dense(8)(i)
        x = L.LayerNormalization()(x)
        x = L.Dense(8)(x)
        x = L.Reshape((2, 4))(x)
        x = L.GroupNormalization(groups=2)(x)
        x = L.Flatten()(x)
        x = L.Dense(6)(x)
        x = L.UnitNormalization()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6)
    elif name == "dense_nobias_constraint":
        i = keras.Input((6,))
        x = L.Dense(5, use_bias=False, activation="tanh")(i)
        x = L.Dense(4, use_bias=False, kernel_constraint=keras.constraints.NonNeg())(x)
        m = keras.Model(i, L.Dense(2, use_bias=False)(x))
        xs = rnd(6)
    elif name == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")
        i = keras.Input((6,))
        x = L.Dense(8, activation="relu")(i)
        x = L.Dense(8, activation="relu")(x)
        m = keras.Model(i, L.Dense(2, dtype="float32")(x))
        xs = rnd(6)
    elif name == "attention_layers":
        q = keras.Input((4, 6))
        v = keras.Input((5, 6))
        qq = L.Dense(4)(q)
        vv = L.Dense(4)(v)
        a1 = L.Attention(use_scale=True)([qq, vv])
        a2 = L.AdditiveAttention()([qq, vv])
        x = L.Concatenate()([a1, a2])
        x = L.Flatten()(x)
        m = keras.Model([q, v], L.Dense(2)(x))
        xs = [rnd(4, 6), rnd(5, 6)]
    elif name == "mha_mask":
        i = keras.Input((5, 6))
        mask = keras.Input((5, 5), dtype="bool")
        x = L.MultiHeadAttention(num_heads=2, key_dim=3)(i, i, attention_mask=mask)
        x = L.Add()([x, i])
        x = L.Dense(4, activation="relu")(x)
        x = L.GlobalAveragePooling1D()(x)
        m = keras.Model([i, mask], L.Dense(2)(x))
        mk = np.tril(np.ones((5, 5), bool))[None].repeat(N, 0)
        xs = [rnd(5, 6), mk]
    elif name == "residual_mlp":
        i = keras.Input((6,))
        h = L.Dense(6, activation="relu")(i)
        r = L.Add()([h, i])
        g = L.Dense(6, activation="sigmoid")(r)
        p = L.Multiply()([r, g])
        c = L.Concatenate()([p, i, r])
        x = L.Dense(5, activation="relu")(c)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6)
    elif name == "spectral_norm_dropout":
        i = keras.Input((6,))
        x = L.Dense(8, activation="relu")(i)
        x = L.Dropout(0.3)(x)
        x = L.SpectralNormalization(L.Dense(5, activation="relu"))(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6)
    elif name == "custom_weight_layer":
        @keras.saving.register_keras_serializable(package="fuzz")
        class MyLinear(keras.layers.Layer):
            def __init__(self, units, **kw):
                super().__init__(**kw)
                self.units = units

            def build(self, shape):
                self.w = self.add_weight(shape=(shape[-1], self.units), initializer="glorot_uniform", name="kernel")
                self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

            def call(self, x):
                return keras.ops.matmul(x, self.w) + self.b

            def get_config(self):
                return {**super().get_config(), "units": self.units}

        i = keras.Input((6,))
        x = L.Dense(5, activation="tanh")(i)
        x = MyLinear(4, name="my_linear")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6)
    elif name == "mobilenetv3_head":
        base = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, include_top=False,
                                                  minimalistic=True, pooling="avg", include_preprocessing=False)
        i = keras.Input((32, 32, 3))
        m = keras.Model(i, L.Dense(3)(base(i)))
        xs = rng.uniform(0, 1, (N, 32, 32, 3)).astype("float32")
    elif name == "loaded_from_file":
        i = keras.Input((6, 3))
        x = L.Conv1D(4, 2, activation="relu")(i)
        x = L.LSTM(4)(x)
        mm = keras.Model(i, L.Dense(2)(x))
        path = os.path.join(WORK, f"loaded_{keras.backend.backend()}.keras")
        mm.save(path)
        m = keras.saving.load_model(path)
        xs = rnd(6, 3)
    elif name == "lstm_encoder_decoder":
        enc_in = keras.Input((5, 3))
        dec_in = keras.Input((4, 2))
        _, h, c = L.LSTM(4, return_state=True)(enc_in)
        y = L.LSTM(4, return_sequences=True)(dec_in, initial_state=[h, c])
        y = L.TimeDistributed(L.Dense(2))(y)
        m = keras.Model([enc_in, dec_in], y)
        xs = [rnd(5, 3), rnd(4, 2)]
    elif name == "rnn_stacked_return_state":
        i = keras.Input((5, 3))
        cells = [L.GRUCell(4), L.SimpleRNNCell(3)]
        out = L.RNN(cells, return_sequences=True, return_state=True)(i)
        seq, s1, s2 = out
        x = L.Concatenate()([L.Flatten()(seq), s1, s2])
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 3)
    elif name == "masked_lstm":
        i = keras.Input((6,), dtype="int32")
        x = L.Embedding(10, 4, mask_zero=True)(i)
        x = L.Dense(4, activation="tanh")(x)  # mask passes through Dense
        x = L.LSTM(3)(x)
        m = keras.Model(i, L.Dense(2)(x))
        xi = rng.integers(1, 10, (N, 6)).astype("int32")
        for r in range(N):
            xi[r, rng.integers(2, 6):] = 0
        xs = xi
    elif name == "conv2d_channels_first":
        i = keras.Input((2, 6, 6))
        x = L.Conv2D(3, 3, data_format="channels_first", activation="relu")(i)
        x = L.Conv2D(3, 3, data_format="channels_first")(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(2, 6, 6)
    elif name == "fanout_dense":
        i = keras.Input((6,))
        h = L.Dense(5, activation="relu")(i)
        a = L.Dense(3)(h)
        b = L.Dense(3, activation="tanh")(h)
        c = L.Dense(3)(i)
        x = L.Add()([a, b, c])
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6)
    elif name == "permute_reshape":
        i = keras.Input((4, 6))
        x = L.Permute((2, 1))(i)
        x = L.Dense(3)(x)  # contracts the original time axis
        x = L.Reshape((18,))(x)
        x = L.RepeatVector(2)(x)
        x = L.Dense(4)(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(4, 6)
    elif name == "lora_dense":
        i = keras.Input((6,))
        d1 = L.Dense(8, activation="relu")
        x = d1(i)
        d2 = L.Dense(5, activation="tanh")
        x = d2(x)
        m = keras.Model(i, L.Dense(2)(x))
        d2.enable_lora(2)
        # make the LoRA delta nonzero so the effective kernel differs from `kernel`
        d2.lora_kernel_b.assign(np.full(d2.lora_kernel_b.shape, 0.3, "float32"))
        xs = rnd(6)
    elif name == "quantized_int8":
        i = keras.Input((6,))
        x = L.Dense(8, activation="relu")(i)
        x = L.Dense(5, activation="tanh")(x)
        m = keras.Model(i, L.Dense(2)(x))
        m.quantize("int8")
        xs = rnd(6)
    elif name == "einsum_ellipsis":
        i = keras.Input((5, 4))
        x = L.EinsumDense("...b,bc->...c", output_shape=6, bias_axes="c", activation="tanh")(i)
        x = L.EinsumDense("...c,cd->...d", output_shape=3)(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 4)
    elif name == "stateful_rnn":
        i = keras.Input(batch_shape=(16, 5, 3))
        x = L.SimpleRNN(4, stateful=True, return_sequences=True)(i)
        x = L.LSTM(3, stateful=True)(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 3)
    elif name == "gru_variants":
        i = keras.Input((6, 3))
        x = L.GRU(4, reset_after=False, return_sequences=True, go_backwards=True)(i)
        x = L.LSTM(4, use_bias=False, unroll=True, return_sequences=True)(x)
        x = L.SimpleRNN(3, activation="relu")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6, 3)
    elif name == "bilstm_return_state":
        i = keras.Input((5, 3))
        out, fh, fc, bh, bc = L.Bidirectional(L.LSTM(4, return_state=True), merge_mode="sum")(i)
        x = L.Concatenate()([out, fh, bc])
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 3)
    elif name == "mha_cross_causal":
        q = keras.Input((4, 6))
        kv = keras.Input((4, 5))
        v = keras.Input((4, 3))
        out, scores = L.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=2)(
            q, v, key=kv, use_causal_mask=True, return_attention_scores=True)
        x = L.Concatenate()([L.Flatten()(out), L.Flatten()(scores)])
        x2 = L.MultiHeadAttention(num_heads=1, key_dim=4, output_shape=(5,))(q, q)
        x = L.Concatenate()([x, L.Flatten()(x2)])
        m = keras.Model([q, kv, v], L.Dense(2)(x))
        xs = [rnd(4, 6), rnd(4, 5), rnd(4, 3)]
    elif name == "gqa":
        i = keras.Input((5, 8))
        x = L.GroupQueryAttention(head_dim=2, num_query_heads=4, num_key_value_heads=2)(i, i)
        x = L.Dense(3)(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5, 8)
    elif name == "nested_multi_output":
        si = keras.Input((5,))
        h = L.Dense(4, activation="tanh")(si)
        sub = keras.Model(si, [h, L.Dense(3)(h)], name="sub")
        i = keras.Input((5,))
        a, b = sub(i)
        x = L.Concatenate()([L.Dense(3)(a), b, L.Dense(2)(a)])
        m = keras.Model(i, [L.Dense(2)(x), L.Dense(1)(a)])
        xs = rnd(5)
    elif name == "input_fanout_mixed":
        i = keras.Input((6, 6, 3))
        a = L.Conv2D(4, 3)(i)
        b = L.Dense(4)(i)
        c = L.DepthwiseConv2D(3)(i)
        x = L.Concatenate()([L.Flatten()(a), L.Flatten()(b), L.Flatten()(c)])
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6, 6, 3)
    elif name == "output_is_whitened":
        i = keras.Input((6,))
        h = L.Dense(5, activation="tanh")(i)
        out = L.Dense(2)(h)
        m = keras.Model(i, [out, h, i])  # inputs of Dense layers are also model outputs
        xs = rnd(6)
    elif name == "seq_in_seq":
        inner = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="relu"), L.Dense(4)], name="inner")
        fi = keras.Input((4,))
        func = keras.Model(fi, L.Dense(3, activation="tanh")(fi), name="func")
        m = keras.Sequential([keras.Input((6,)), inner, L.Activation("relu"), func, L.Dense(2)])
        xs = rnd(6)
    elif name == "normalization_adapted":
        norm = L.Normalization()
        data = rnd(5) * 3 + 1
        norm.adapt(data)
        i = keras.Input((5,))
        x = norm(i)
        x = L.Dense(4, activation="relu")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = data
    elif name == "conv_regularized_strided":
        i = keras.Input((9, 9, 2))
        x = L.Conv2D(4, 3, strides=2, padding="same", dilation_rate=1, kernel_regularizer=keras.regularizers.L2(1e-2),
                     activity_regularizer=keras.regularizers.L1(1e-3), activation="relu")(i)
        x = L.Conv2D(3, 2, dilation_rate=2, padding="same", bias_regularizer=keras.regularizers.L2(1e-2))(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2, kernel_regularizer=keras.regularizers.L1L2(1e-3, 1e-3))(x))
        xs = rnd(9, 9, 2)
    elif name == "shared_td":
        td = L.TimeDistributed(L.Dense(4, activation="tanh"))
        a = keras.Input((3, 5))
        b = keras.Input((3, 5))
        x = L.Concatenate()([td(a), td(b)])
        x = L.Flatten()(x)
        m = keras.Model([a, b], L.Dense(2)(x))
        xs = [rnd(3, 5), rnd(3, 5)]
    elif name == "float64_policy":
        keras.config.set_floatx("float64")
        i = keras.Input((6,))
        x = L.Dense(8, activation="tanh")(i)
        x = L.Conv1D(3, 2)(L.Reshape((4, 2))(x))
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6).astype("float64")
        ys = rng.standard_normal((N, 2))
        return m, xs, ys, loss
    elif name == "mixed_bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        i = keras.Input((6, 6, 2))
        x = L.Conv2D(4, 3, activation="relu")(i)
        x = L.Flatten()(x)
        x = L.Dense(8, activation="relu")(x)
        m = keras.Model(i, L.Dense(2, dtype="float32")(x))
        xs = rnd(6, 6, 2)
    elif name == "masking_lstm":
        i = keras.Input((6, 3))
        x = L.Masking(mask_value=0.0)(i)
        x = L.LSTM(4, return_sequences=True)(x)
        x = L.GRU(3)(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6, 3)
        for r in range(N):
            xs[r, rng.integers(2, 6):] = 0.0
    elif name == "wide_dense_lowrank":
        i = keras.Input((300,))
        x = L.Dense(280, activation="relu")(i)
        x = L.Dense(8, activation="relu")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(300) * np.linspace(0.1, 3, 300).astype("float32")
    elif name == "nobias_everything":
        i = keras.Input((7, 3))
        x = L.Conv1D(4, 3, padding="same", use_bias=False)(i)
        x = L.Conv1D(4, 3, padding="causal", use_bias=False)(x)
        x = L.EinsumDense("abc,cd->abd", output_shape=(7, 5))(x)
        x = L.LSTM(4, use_bias=False, return_sequences=True)(x)
        x = L.Conv1DTranspose(3, 2, strides=2, use_bias=False)(x)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2, use_bias=False)(x))
        xs = rnd(7, 3) + 2.0
    elif name == "hub_albert":
        import keras_hub
        backbone = keras_hub.models.AlbertBackbone(vocabulary_size=30, num_layers=2, num_heads=2, num_groups=1,
                                                   num_inner_repetitions=1, embedding_dim=4, hidden_dim=8,
                                                   intermediate_dim=16, max_sequence_length=8)
        inputs = {k: keras.Input((8,), dtype="int32", name=k) for k in ("token_ids", "segment_ids", "padding_mask")}
        out = backbone(inputs)
        m = keras.Model(inputs, L.Dense(2)(out["pooled_output"]))
        xs = {"token_ids": rng.integers(0, 30, (N, 8)).astype("int32"),
              "segment_ids": np.zeros((N, 8), "int32"), "padding_mask": np.ones((N, 8), "int32")}
    elif name == "hub_transformer_encoder_layer":
        import keras_hub
        i = keras.Input((6,), dtype="int32")
        x = keras_hub.layers.TokenAndPositionEmbedding(20, 6, 8)(i)
        x = keras_hub.layers.TransformerEncoder(intermediate_dim=12, num_heads=2, normalize_first=True)(x)
        x = keras_hub.layers.TransformerEncoder(intermediate_dim=12, num_heads=2)(x)
        x = L.GlobalAveragePooling1D()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rng.integers(0, 20, (N, 6)).astype("int32")
    elif name == "unet_skip_concat":
        # An image-to-image U-Net: skips concatenated after upsampling, a transposed convolution, a 1x1 head.
        i = keras.Input((8, 8, 2))
        c1 = L.Conv2D(4, 3, padding="same", activation="relu")(i)
        d1 = L.MaxPooling2D()(c1)
        c2 = L.Conv2D(6, 3, padding="same", activation="relu")(d1)
        u1 = L.UpSampling2D()(c2)
        t1 = L.Conv2DTranspose(4, 2, strides=2, padding="same")(c2)
        x = L.Concatenate()([u1, t1, c1])
        x = L.Conv2D(4, 3, padding="same", activation="relu")(x)
        m = keras.Model(i, L.Conv2D(1, 1)(x))
        xs = rnd(8, 8, 2)
    elif name == "siamese_shared_encoder":
        # One encoder model called on two inputs; the difference of the codes into the head.
        e_in = keras.Input((6,))
        e = L.Dense(8, activation="relu")(e_in)
        encoder = keras.Model(e_in, L.Dense(4)(e), name="encoder")
        a, b = keras.Input((6,), name="left"), keras.Input((6,), name="right")
        distance = L.Subtract()([encoder(a), encoder(b)])
        m = keras.Model([a, b], L.Dense(1)(distance))
        xs = [rnd(6), rnd(6)]
    elif name == "transformer_block_causal":
        # A pre-norm decoder block from Keras layers: causal self-attention, a feed-forward net, residuals.
        i = keras.Input((6, 8))
        h = L.LayerNormalization()(i)
        h = L.MultiHeadAttention(2, 4)(h, h, use_causal_mask=True)
        x = L.Add()([i, h])
        h = L.LayerNormalization()(x)
        h = L.Dense(16, activation="gelu")(h)
        h = L.Dropout(0.1)(L.Dense(8)(h))
        x = L.Add()([x, h])
        m = keras.Model(i, L.Dense(3)(L.LayerNormalization()(x)))
        xs = rnd(6, 8)
    elif name == "conv1d_gru_attention_pool":
        # Conv1D features into a GRU, pooled by a learned attention over time (Dense scores, softmax, mean).
        i = keras.Input((10, 3))
        x = L.Conv1D(6, 3, padding="same", activation="relu")(i)
        x = L.GRU(5, return_sequences=True)(x)
        scores = L.Softmax(axis=1)(L.Dense(1)(x))
        pooled = L.GlobalAveragePooling1D()(L.Multiply()([x, scores]))
        m = keras.Model(i, L.Dense(2)(pooled))
        xs = rnd(10, 3)
    elif name == "spectral_norm_wrappers":
        i = keras.Input((6, 6, 2))
        x = L.SpectralNormalization(L.Conv2D(4, 3, activation="relu"))(i)
        x = L.Flatten()(x)
        x = L.SpectralNormalization(L.Dense(8, activation="relu"))(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6, 6, 2)
    elif name == "group_unit_norm":
        i = keras.Input((6, 6, 3))
        x = L.Conv2D(4, 3)(i)
        x = L.GroupNormalization(groups=2)(x)
        x = L.Flatten()(x)
        x = L.UnitNormalization()(L.Dense(8)(x))
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6, 6, 3)
    elif name == "discretization_embedding":
        i = keras.Input((4,))
        d = L.Discretization(bin_boundaries=[-1.0, 0.0, 1.0])(i)
        e = L.Embedding(4, 3)(d)
        x = L.Flatten()(e)
        x = L.Dense(6, activation="relu")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(4)
    elif name == "additive_attention":
        # Beyond `attention_layers`: the trainable weights of AdditiveAttention(use_scale=True) and of the
        # concat score, and a value sequence longer than the query.
        q = keras.Input((5, 4))
        v = keras.Input((7, 4))
        qp = L.Dense(6)(q)
        vp = L.Dense(6)(v)
        a = L.AdditiveAttention(use_scale=True)([qp, vp])
        b = L.Attention(use_scale=True, score_mode="concat")([qp, vp])
        x = L.Concatenate()([a, b])
        x = L.GlobalAveragePooling1D()(x)
        m = keras.Model([q, v], L.Dense(2)(x))
        xs = [rnd(5, 4), rnd(7, 4)]
    elif name == "gru_reset_after_false":
        i = keras.Input((6, 3))
        x = L.GRU(5, reset_after=False, return_sequences=True)(i)
        x = L.Bidirectional(L.GRU(4, reset_after=False, use_bias=False))(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6, 3)
    elif name == "einsum_bias_axes":
        i = keras.Input((5, 4))
        x = L.EinsumDense("abc,cd->abd", output_shape=(None, 6), bias_axes="d", activation="relu")(i)
        x = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3), bias_axes="de")(x)
        x = L.Reshape((5, 6))(x)
        x = L.EinsumDense("abc,bcd->ad", output_shape=(3,), bias_axes="d")(x)
        m = keras.Model(i, x)
        xs = rnd(5, 4)
    elif name == "nested_sequential_twice":
        block = keras.Sequential([L.Dense(6, activation="relu"), L.Dense(4)], name="block")
        a = keras.Input((5,))
        b = keras.Input((5,))
        x = L.Concatenate()([block(a), block(b)])
        m = keras.Model([a, b], L.Dense(2)(x))
        xs = [rnd(5), rnd(5)]
    elif name == "mha_2d_axes":
        i = keras.Input((3, 4, 6))
        x = L.MultiHeadAttention(2, 3, attention_axes=(1, 2))(i, i)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(3, 4, 6)
    elif name == "conv_lstm1d":
        i = keras.Input((4, 8, 2))
        x = L.ConvLSTM1D(3, 3, return_sequences=False)(i)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(4, 8, 2)
    elif name == "rnn_return_state":
        i = keras.Input((6, 3))
        seq, h, c = L.LSTM(5, return_sequences=True, return_state=True)(i)
        x = L.SimpleRNN(4, use_bias=False)(seq, initial_state=[L.Dense(4)(h)])
        m = keras.Model(i, [L.Dense(2)(x), L.Dense(1)(c)])
        xs = rnd(6, 3)
    elif name == "time_distributed_conv1d":
        i = keras.Input((3, 8, 2))
        x = L.TimeDistributed(L.Conv1D(4, 3, activation="relu"))(i)
        x = L.TimeDistributed(L.GlobalMaxPooling1D())(x)
        x = L.LSTM(4)(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(3, 8, 2)
    elif name == "float64_layer":
        i = keras.Input((5,))
        x = L.Dense(6, activation="relu")(i)
        x = L.Dense(6, dtype="float64")(x)
        x = L.Activation("relu", dtype="float32")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(5)
    elif name == "constraints_unitnorm":
        i = keras.Input((6, 6, 2))
        x = L.Conv2D(4, 3, kernel_constraint=keras.constraints.MaxNorm(1.0))(i)
        x = L.GlobalAveragePooling2D()(x)
        x = L.Dense(6, kernel_constraint=keras.constraints.UnitNorm(axis=0), activation="relu")(x)
        x = L.Dense(6, kernel_constraint=keras.constraints.NonNeg())(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(6, 6, 2)
    elif name == "separable_conv2d_pool":
        i = keras.Input((8, 8, 3))
        x = L.SeparableConv2D(6, 3, depth_multiplier=2, activation="relu")(i)
        x = L.AveragePooling2D(2)(x)
        x = L.Conv2D(4, 1, use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.GlobalMaxPooling2D()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(8, 8, 3)
    elif name == "prelu_shared_axes":
        m = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(4, 3), L.PReLU(shared_axes=[1, 2]), L.Flatten(),
                              L.Dense(6), L.PReLU(), L.Dense(2)])
        xs = rnd(6, 6, 2)
    elif name == "dot_normalize_rmsnorm":
        a = keras.Input((5,))
        b = keras.Input((5,))
        pa = L.RMSNormalization()(L.Dense(6)(a))
        pb = L.Dense(6)(b)
        x = L.Concatenate()([L.Dot(axes=1, normalize=True)([pa, pb]), pa])
        m = keras.Model([a, b], L.Dense(2)(x))
        xs = [rnd(5), rnd(5)]
    elif name == "augment_resize_conv":
        i = keras.Input((8, 8, 3))
        x = L.RandomFlip("horizontal")(i)
        x = L.RandomRotation(0.1)(x)
        x = L.Resizing(6, 6)(x)
        x = L.Conv2D(4, 3, activation="relu")(x)
        x = L.GlobalAveragePooling2D()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(8, 8, 3)
    elif name == "category_encoding":
        i = keras.Input((3,), dtype="int32")
        x = L.CategoryEncoding(num_tokens=6, output_mode="multi_hot")(i)
        x = L.Dense(5, activation="relu")(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rng.integers(0, 6, (N, 3)).astype("int32")
    elif name == "conv_lstm3d":
        i = keras.Input((2, 4, 4, 4, 1))
        x = L.ConvLSTM3D(2, 2)(i)
        x = L.Flatten()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(2, 4, 4, 4, 1)
    elif name == "mask_zero_pool":
        i = keras.Input((7,), dtype="int32")
        x = L.Embedding(10, 4, mask_zero=True)(i)
        x = L.Dense(5, activation="relu")(x)
        x = L.GlobalAveragePooling1D()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rng.integers(0, 10, (N, 7)).astype("int32")
        xs[:, -2:] = 0
    elif name == "mel_spectrogram_conv1d":
        i = keras.Input((512,))
        x = L.MelSpectrogram(fft_length=128, sequence_stride=64, num_mel_bins=8, sampling_rate=8000)(i)
        x = L.Permute((2, 1))(x)
        x = L.Conv1D(4, 3, activation="relu")(x)
        x = L.GlobalAveragePooling1D()(x)
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(512)
    elif name == "noise_dropout_conv1d":
        i = keras.Input((10, 3))
        x = L.GaussianNoise(0.1)(i)
        x = L.Conv1D(6, 3, activation="relu", kernel_regularizer="l2", bias_regularizer="l1",
                     activity_regularizer="l2")(x)
        x = L.SpatialDropout1D(0.2)(x)
        x = L.GaussianDropout(0.1)(x)
        x = L.AlphaDropout(0.1)(x)
        x = L.ActivityRegularization(l1=1e-3)(x)
        x = L.Identity()(L.Flatten()(x))
        m = keras.Model(i, L.Dense(2)(x))
        xs = rnd(10, 3)
    else:
        raise KeyError(name)
    outs = m.outputs
    if len(outs) == 1:
        ys = rng.standard_normal((N,) + tuple(outs[0].shape[1:])).astype("float32")
    else:
        ys = [rng.standard_normal((N,) + tuple(o.shape[1:])).astype("float32") for o in outs]
    return m, xs, ys, loss


def run_one(name):
    import numpy as np
    import keras
    import keras_sngd
    from keras_sngd import LocalFisher

    backend = keras.backend.backend()
    work = WORK
    results = []

    def record(check, ok, msg=""):
        results.append((check, ok, msg))
        print(f"  [{'PASS' if ok else 'FAIL'}] {check}: {msg}", flush=True)

    def predict(model, xs):
        if name == "stateful_rnn":
            for l in all_layers(model):
                if getattr(l, "stateful", False) and hasattr(l, "reset_state"):
                    l.reset_state()
            outs = [model(xs[k:k + 16], training=False) for k in range(0, len(xs), 16)]
            out = keras.ops.concatenate(outs, 0)
        else:
            out = model(xs, training=False)
        return [np.asarray(keras.ops.convert_to_numpy(o), dtype="float64") for o in keras.tree.flatten(out)]

    def rel(a_list, b_list):
        worst = 0.0
        for a, b in zip(a_list, b_list):
            if a.shape != b.shape:
                return float("inf")
            scale = max(np.max(np.abs(b)), 1e-6)
            worst = max(worst, float(np.max(np.abs(a - b))) / scale)
        return worst

    ancestry = {}

    def all_layers(model):
        out = []
        seen = set()

        def visit(layer, parents=()):
            if id(layer) in seen:
                return
            seen.add(id(layer))
            out.append(layer)
            ancestry[id(layer)] = parents
            subs = []
            try:
                subs = list(layer._flatten_layers(include_self=False, recursive=False))
            except Exception:
                pass
            for attr in ("layer", "forward_layer", "backward_layer", "cell"):
                s = getattr(layer, attr, None)
                if isinstance(s, keras.layers.Layer):
                    subs.append(s)
            for s in subs:
                visit(s, parents + (layer.name,))

        visit(model)
        return out

    def local_fishers(model):
        return [l for l in all_layers(model) if isinstance(l, LocalFisher)]

    plain, xs, ys, loss = build(name)
    tol_scale = {"mixed_float16": 100.0, "mixed_bfloat16": 300.0}.get(POLICY if "fuzz_" in name else name, 1.0)
    print(f"=== {name} [{backend}] params={plain.count_params()}", flush=True)
    if "fuzz_" in name:
        plain.summary(line_length=140, expand_nested=True)
    try:
        y0 = predict(plain, xs)
    except Exception as e:  # Keras itself (e.g. its MultiHeadAttention with value_dim != key_dim on JAX)
        record("0.plain_call", True, f"n/a: the plain model fails on {backend} ({type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:200]})")
        return results

    # 1. reconstruct
    try:
        sngd, report = keras_sngd.reconstruct(plain, return_report=True, local_fisher_arguments=LF_ARGS)
    except (ValueError, TypeError) as e:
        record("1.reconstruct", False, f"raised {type(e).__name__} (clear?): {e}")
        return results
    except Exception as e:
        traceback.print_exc()
        record("1.reconstruct", False, f"raised {type(e).__name__}: {e}")
        return results
    print(str(report))
    d = rel(predict(sngd, xs), y0)
    record("1.equal_at_start", d <= 1e-5 * tol_scale, f"rel diff {d:.3g}")
    lfs = local_fishers(sngd)
    print(f"  LocalFishers found by walk: {len(lfs)}; report inserted: {len(report.inserted)}")

    # 6. coverage of parameterized layers
    listed = set()
    for row in list(report.inserted) + list(report.skipped):
        for part in str(row[0]).replace("+", "/").split("/"):
            listed.add(part)
            listed.add(part.split(" (")[0])  # an attention's projections: "attention (query)"
        listed.add(str(row[0]))
    unlisted = []
    for layer in all_layers(plain):
        if layer is plain or isinstance(layer, keras.Model):
            continue
        own = getattr(layer, "_trainable_variables", None)
        if own is None:
            own = layer.trainable_weights if not layer._layers else []
        own = [v for v in own if v.trainable and "kernel" in (getattr(v, "path", None) or v.name).split("/")[-1]]
        if not own:
            continue
        if layer.name not in listed and not any(p in listed for p in ancestry.get(id(layer), ())):
            unlisted.append(f"{layer.name} ({type(layer).__name__}: {[v.path if hasattr(v, 'path') else v.name for v in own]})")
    record("6.coverage", not unlisted, "unlisted: " + "; ".join(unlisted) if unlisted else "all listed")

    # 2. SGD(0) refreshes are function-preserving
    try:
        plain.compile(keras.optimizers.SGD(0.0), loss)
        plain.fit(xs, ys, batch_size=16, epochs=2, verbose=0, shuffle=False)
        yref = predict(plain, xs)
    except Exception as e:
        record("2.sgd0_fit", True, f"n/a: the plain model's fit fails on {backend} too ({type(e).__name__}: {str(e)[:200]})")
        return results
    try:
        sngd.compile(keras.optimizers.SGD(0.0), loss)
        sngd.fit(xs, ys, batch_size=16, epochs=2, verbose=0, shuffle=False)
        d = rel(predict(sngd, xs), yref)
        counts = [int(keras.ops.convert_to_numpy(l.refresh_count)) for l in lfs]
        failed = [int(keras.ops.convert_to_numpy(l.failed_refresh_count)) for l in lfs]
        record("2.sgd0_preserving", d <= 1e-4 * tol_scale, f"rel diff {d:.3g}; refresh_count={counts} failed={failed}")
        if lfs:  # (none where every layer is skipped, e.g. quantized)
            record("2.refreshed", any(c >= 1 for c in counts), f"refresh_count={counts}")
    except Exception as e:
        traceback.print_exc()
        record("2.sgd0_fit", False, f"raised {type(e).__name__}: {str(e)[:600]}")
        return results

    # 3. train
    try:
        sngd.optimizer.learning_rate = 0.05
        h = sngd.fit(xs, ys, batch_size=16, epochs=2, verbose=0, shuffle=False)
        losses = h.history["loss"]
        record("3.train_finite", bool(np.all(np.isfinite(losses))), f"losses={[round(float(v), 4) for v in losses]}")
        counts = [int(keras.ops.convert_to_numpy(l.refresh_count)) for l in lfs]
        print(f"  refresh_count after training: {counts}")
    except Exception as e:
        traceback.print_exc()
        record("3.train", False, f"raised {type(e).__name__}: {str(e)[:600]}")
        return results
    ys_sngd = predict(sngd, xs)

    # 4. fold
    folded = None
    try:
        folded = keras_sngd.fold(sngd)
        left = [f"{l.name}({type(l).__name__})" for l in all_layers(folded)
                if type(l).__module__.startswith("keras_sngd")]
        record("4.fold_plain", not left, f"keras_sngd layers left: {left}" if left else "no keras_sngd layers")
        d = rel(predict(folded, xs), ys_sngd)
        record("4.fold_equal", d <= 1e-4 * tol_scale, f"rel diff {d:.3g}")
    except Exception as e:
        traceback.print_exc()
        record("4.fold", False, f"raised {type(e).__name__}: {str(e)[:600]}")

    # 5. save/load
    try:
        path = os.path.join(work, f"{name}_{backend}_plain.keras")
        plain.save(path)
        keras.saving.load_model(path, safe_mode=False)
    except Exception as e:
        record("5.saveload", True, f"n/a: Keras cannot reload the plain model ({type(e).__name__}: {str(e)[:200]})")
        return results
    for tag, model, ref in (("sngd", sngd, ys_sngd), ("folded", folded, None)):
        if model is None:
            continue
        try:
            path = os.path.join(work, f"{name}_{backend}_{tag}.keras")
            model.save(path)
            loaded = keras.saving.load_model(path, safe_mode=False)
            r = ref if ref is not None else predict(model, xs)
            d = rel(predict(loaded, xs), r)
            record(f"5.saveload_{tag}", d <= 1e-6 * tol_scale, f"rel diff {d:.3g}")
            if tag == "sngd":
                # a loaded sngd model should keep training and fold too
                loaded.compile(keras.optimizers.SGD(0.0), loss)
                loaded.fit(xs, ys, batch_size=16, epochs=1, verbose=0, shuffle=False)
                sngd.optimizer.learning_rate = 0.0
                sngd.fit(xs, ys, batch_size=16, epochs=1, verbose=0, shuffle=False)
                r = predict(sngd, xs)
                d2 = rel(predict(loaded, xs), r)
                f2 = keras_sngd.fold(loaded)
                d3 = rel(predict(f2, xs), predict(loaded, xs))
                record("5.loaded_sngd_fit0_fold", d2 <= 1e-4 * tol_scale and d3 <= 1e-4 * tol_scale,
                       f"after SGD(0) fit rel {d2:.3g}; fold(loaded) rel {d3:.3g}")
        except Exception as e:
            traceback.print_exc()
            record(f"5.saveload_{tag}", False, f"raised {type(e).__name__}: {str(e)[:600]}")
    return results


def main():
    args = sys.argv[1:]
    if args and args[0] == "--one":
        res = run_one(args[1])
        bad = [r for r in res if not r[1]]
        shown = [r for r in res if not r[1] or r[2].startswith("n/a")]
        verdict = "N/A" if any(c == "0.plain_call" for c, _, _ in res) else ("FAIL" if bad else "PASS")
        print("RESULT", args[1], verdict, "; ".join(f"{c}: {m}" for c, ok, m in shown))
        return
    usage = ("usage: python benchmarks/model_probe.py [--subset A,B | --fuzz [deep_]START:STOP] [--logs DIR] | --one NAME\n"
             "  runs each model in a new process: reconstruct, refreshes at lr 0 (outputs kept), training, fold and\n"
             "  .keras round trips; the backend is KERAS_BACKEND's. --fuzz: random models fuzz_START to\n"
             "  fuzz_STOP-1 (benchmarks/graph_fuzz.py; deep_: deep_fuzz_*, 10 to 16 steps each). Models: "
             + ", ".join(MODEL_NAMES))
    if args and args[0] in ("-h", "--help"):
        print(usage)
        return
    names = MODEL_NAMES
    logdir = None
    while args:
        if len(args) < 2:
            raise ValueError(f"Flag {args[0]!r} needs a value.\n{usage}")
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--fuzz":
            deep = value.startswith("deep_")
            start, _, stop = value[len("deep_") if deep else 0:].partition(":")
            if not start.isdigit() or not (stop or start).isdigit() or int(stop or int(start) + 1) <= int(start):
                raise ValueError(f"--fuzz takes seeds START:STOP (or deep_START:STOP), STOP > START. "
                                 f"Received: --fuzz {value!r}")
            names = [f"{FUZZ_PREFIXES[deep]}{seed}" for seed in range(int(start), int(stop or int(start) + 1))]
        elif flag == "--subset":
            names = value.split(",")
            unknown = sorted(name for name in set(names) - set(MODEL_NAMES)
                             if not name.startswith(FUZZ_PREFIXES))
            if unknown:
                raise ValueError(f"--subset names unknown models {unknown}; known: {', '.join(MODEL_NAMES)}")
        elif flag == "--logs":
            logdir = value
            os.makedirs(logdir, exist_ok=True)
        else:
            raise ValueError(f"Unknown flag {flag!r}: use --one NAME, --subset A,B or --logs DIR")
    import keras

    print(f"# backend {keras.backend.backend()}, keras {keras.__version__}, local_fisher_arguments {LF_ARGS}")
    passed = not_run = 0
    for name in names:
        start = time.time()
        try:
            run = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name], capture_output=True,
                                 text=True, timeout=600)
            output, code = run.stdout + run.stderr, run.returncode
        except subprocess.TimeoutExpired:
            output, code = "", "timeout"
        if logdir:
            with open(os.path.join(logdir, f"{keras.backend.backend()}_{name}.log"), "w") as handle:
                handle.write(output)
        result = [line for line in output.splitlines() if line.startswith("RESULT")]
        row = result[-1][len("RESULT "):] if result else f"{name} NO RESULT (exit {code}): {output[-500:]}"
        passed += bool(result) and result[-1].split()[2] == "PASS"
        not_run += bool(result) and result[-1].split()[2] == "N/A"
        print(f"{time.time() - start:6.1f} s  {row}", flush=True)
    print(f"# {passed} of {len(names) - not_run} models pass"
          + (f"; {not_run} not run (the plain model fails on this backend)" if not_run else ""))


if __name__ == "__main__":
    main()
