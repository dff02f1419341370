"""Random Functional models for `benchmarks/model_probe.py` (`fuzz_<seed>`): graph corners no one wrote down.

The hand-written probe models each test a case someone thought of. These are drawn from a seed: a
directed acyclic graph grown from one to three inputs (vectors, sequences, images, token ids) by
layers and operations a Keras model is made of, with fan-out, merges of branches, layers shared between
branches, nested models called once or twice, bare `keras.ops` operations between layers, and one or two
outputs. The probe runs each through the same checks as its hand-written models (`reconstruct` keeps the
function, refreshes at learning rate 0 keep it, training stays finite, `fold` and `.keras` round trips
keep it, every kernel is in the report).

    python benchmarks/model_probe.py --fuzz 0:40             # seeds 0 to 39, TensorFlow
    python benchmarks/model_probe.py --fuzz deep_0:20        # deeper graphs: 10 to 16 steps
    KERAS_BACKEND=jax python benchmarks/model_probe.py --fuzz 0:40
    python benchmarks/model_probe.py --one fuzz_17           # one model, verbose (its summary first)

Only layers whose outputs the plain model reproduces exactly in training and inference at learning
rate 0 are drawn (no Dropout or noise: their random masks would make the plain and the reconstructed
model's BatchNormalization statistics differ for reasons that are not SNGD's).
"""

import random

N = 64  # examples


def random_model(seed, steps=(3, 8)):
    """`(model, inputs, targets, loss)` for the probe: a random Functional model drawn from `seed`, grown by
    `steps[0]` to `steps[1]` layers, operations, merges or nested models after its inputs."""
    import keras
    import numpy as np
    from keras import layers as L
    from keras import ops

    keras.utils.set_random_seed(seed)
    draw = random.Random(seed)
    data = np.random.default_rng(seed)
    width = lambda: draw.choice([3, 4, 6, 8])  # noqa: E731
    activation = lambda: draw.choice([None, "relu", "tanh", "gelu", "sigmoid"])  # noqa: E731

    inputs, arrays, pool, shared = [], [], [], {}
    embedding = None
    for index in range(draw.choice([1, 1, 2, 3])):
        kind = draw.choice(["vector", "sequence", "image", "tokens"])
        if kind == "vector":
            shape = (draw.choice([5, 7, 12]),)
        elif kind == "sequence":
            shape = (draw.choice([4, 6]), draw.choice([3, 5]))
        elif kind == "image":
            shape = (draw.choice([6, 8]), draw.choice([6, 8]), draw.choice([1, 3]))
        else:
            shape = (draw.choice([4, 6]),)
        tensor = keras.Input(shape, name=f"input_{index}", dtype="int32" if kind == "tokens" else "float32")
        inputs.append(tensor)
        if kind == "tokens":
            arrays.append(data.integers(0, 11, (N,) + shape).astype("int32"))
            if embedding is None or draw.random() < 0.5:  # else one embedding shared by two token inputs
                embedding = L.Embedding(11, width())
            tensor = embedding(tensor)  # the tokens become a sequence
        else:
            arrays.append(data.standard_normal((N,) + shape).astype("float32"))
        pool.append(tensor)

    building_nested = False

    def rank(tensor):
        return len(tensor.shape) - 1  # without the batch axis

    def dense(tensor, units=None):
        """A Dense layer, shared with an earlier branch of the same input width half of the time; now and
        then frozen, constrained or regularized."""
        units = units or width()
        key = (tensor.shape[-1], units)
        if key in shared and draw.random() < 0.5:
            return shared[key](tensor)
        extra = draw.choice([{}, {}, {}, {"kernel_constraint": keras.constraints.MaxNorm(3.0)},
                             {"kernel_regularizer": keras.regularizers.L2(1e-3)},
                             {"bias_regularizer": keras.regularizers.L1(1e-3)}])
        layer = L.Dense(units, activation=activation(), use_bias=draw.random() < 0.8, **extra)
        if draw.random() < 0.1:
            layer.trainable = False
        shared[key] = layer
        return layer(tensor)

    def match(a, b):
        """`b` brought to `a`'s shape where a projection can do it, else None."""
        if a.shape[1:] == b.shape[1:]:
            return b
        if rank(a) == rank(b) and a.shape[1:-1] == b.shape[1:-1]:
            return (L.Conv2D(a.shape[-1], 1) if rank(a) == 3 else L.Dense(a.shape[-1]))(b)
        return None

    def grow(x):
        """One random layer or operation on `x`."""
        r = rank(x)
        if r == 1:
            choice = draw.choice(["dense", "dense", "norm", "ops", "to_sequence", "activation", "einsum"])
            if choice == "einsum":  # a kernel with two output axes, flattened back
                units = width()
                return L.Reshape((2 * units,))(L.EinsumDense("ab,bcd->acd", output_shape=(2, units),
                                                             bias_axes="cd")(x))
            if choice == "dense":
                return dense(x)
            if choice == "norm":
                return draw.choice([L.BatchNormalization(), L.LayerNormalization()])(x)
            if choice == "ops":
                return draw.choice([lambda t: ops.tanh(t) * 2.0, lambda t: t + 1.0, ops.relu, ops.square])(x)
            if choice == "to_sequence":
                return L.Reshape((2, 4))(dense(x, 8))
            return L.Activation(draw.choice(["relu", "swish", "softplus"]))(x)
        if r == 2:
            choice = draw.choice(["dense", "einsum", "conv", "rnn", "attention", "pool", "flatten", "norm",
                                  "time_distributed", "permute", "ops", "slice", "crop", "masked_rnn",
                                  "causal_attention", "grouped_conv", "einsum_heads"])
            if choice == "masked_rnn":  # a mask from Masking through a recurrent layer
                layer = draw.choice([L.LSTM(width(), go_backwards=draw.random() < 0.3),
                                     L.GRU(width(), reset_after=draw.random() < 0.5, return_sequences=True)])
                return layer(L.Masking(0.0)(x))
            if choice == "causal_attention":
                return L.MultiHeadAttention(2, 2, value_dim=3)(x, x, use_causal_mask=True)
            if choice == "grouped_conv" and x.shape[-1] % 2 == 0:
                return L.Conv1D(4, 2, padding="same", groups=2)(x)
            if choice == "einsum_heads":  # two output axes, merged back into features
                out = L.EinsumDense("abc,cde->abde", output_shape=(x.shape[1], 2, 3), bias_axes="de")(x)
                return L.Reshape((x.shape[1], 6))(out)
            if choice == "ops":  # bare operations between layers: a broadcast centring, a transpose pair
                return draw.choice([lambda t: t - ops.mean(t, axis=1, keepdims=True),
                                    lambda t: ops.transpose(ops.transpose(t, (0, 2, 1)) * 0.5, (0, 2, 1)),
                                    lambda t: ops.concatenate([t, t * t], axis=-1)])(x)
            if choice == "slice" and x.shape[1] > 2:
                return x[:, 1:, :]
            if choice == "crop" and x.shape[1] > 2:
                return draw.choice([L.Cropping1D((1, 0)), L.ZeroPadding1D(1), L.UpSampling1D(2)])(x)
            if choice == "dense":
                return dense(x)
            if choice == "einsum":
                return L.EinsumDense("abc,cd->abd", output_shape=(x.shape[1], width()), bias_axes="d")(x)
            if choice == "conv":
                return L.Conv1D(width(), draw.choice([1, 2, 3]), padding=draw.choice(["same", "causal"]),
                                activation=activation())(x)
            if choice == "rnn":
                layer = draw.choice([L.LSTM, L.GRU, L.SimpleRNN])(width(), return_sequences=draw.random() < 0.5)
                return L.Bidirectional(layer)(x) if draw.random() < 0.3 else layer(x)
            if choice == "attention":
                others = [t for t in pool if rank(t) == 2 and t is not x] if not building_nested else []
                value = draw.choice(others) if others and draw.random() < 0.4 else x  # cross-attention
                return L.MultiHeadAttention(2, draw.choice([2, 4]))(x, value)
            if choice == "pool":
                return draw.choice([L.GlobalAveragePooling1D(), L.GlobalMaxPooling1D()])(x)
            if choice == "flatten":
                return L.Flatten()(x)
            if choice == "time_distributed":
                return L.TimeDistributed(L.Dense(width()))(x)
            if choice == "permute":
                return L.Permute((2, 1))(x)  # a Dense after it mixes time steps
            return L.LayerNormalization()(x)
        choice = draw.choice(["conv", "conv", "depthwise", "separable", "transpose", "norm", "pool", "global",
                              "flatten", "to_sequence", "pad", "strided", "ops", "pixel_dense", "grouped"])
        if choice == "pixel_dense":  # a Dense over the channels of every pixel
            return dense(x)
        if choice == "grouped" and x.shape[-1] % 2 == 0:
            return L.Conv2D(4, 3, padding="same", groups=2)(x)
        if choice == "conv":
            return L.Conv2D(width(), draw.choice([1, 3]), padding="same", activation=activation(),
                            use_bias=draw.random() < 0.7, dilation_rate=draw.choice([1, 1, 2]))(x)
        if choice == "strided" and x.shape[1] >= 4 and x.shape[2] >= 4:
            return L.Conv2D(width(), 3, strides=2, padding=draw.choice(["same", "valid"]))(x)
        if choice == "pad":
            return draw.choice([L.ZeroPadding2D(1), L.UpSampling2D(2), L.Cropping2D(((1, 0), (0, 1)))])(x)
        if choice == "ops":
            return draw.choice([lambda t: ops.relu(t) + ops.mean(t, axis=(1, 2), keepdims=True),
                                lambda t: ops.image.resize(t, (4, 4)),
                                lambda t: t * ops.sigmoid(t)])(x)
        if choice == "depthwise":
            return L.DepthwiseConv2D(3, padding="same")(x)
        if choice == "separable":
            return L.SeparableConv2D(width(), 3, padding="same")(x)
        if choice == "transpose":
            return L.Conv2DTranspose(width(), 2, strides=1, padding="same")(x)
        if choice == "norm":
            return L.BatchNormalization()(x)
        if choice == "pool" and x.shape[1] >= 4 and x.shape[2] >= 4:
            return draw.choice([L.MaxPooling2D(2), L.AveragePooling2D(2)])(x)
        if choice == "global":
            return L.GlobalAveragePooling2D()(x)
        if choice == "to_sequence":
            return L.Reshape((x.shape[1] * x.shape[2], x.shape[3]))(x)
        return L.Flatten()(x)

    def nested(x):
        """A small model of its own, called on `x` (and on a second tensor of the same shape, if any)."""
        nonlocal building_nested
        inner_input = keras.Input(tuple(x.shape[1:]))
        building_nested = True  # its layers may read only its own input
        inner = grow(inner_input)
        if rank(inner) == rank(inner_input) and inner.shape[1:-1] == inner_input.shape[1:-1]:
            inner = grow(inner)
        building_nested = False
        if draw.random() < 0.3:  # a Sequential of its own
            model = keras.Sequential([keras.Input(tuple(x.shape[1:])), L.Dense(width(), activation="relu"),
                                      L.Dense(x.shape[-1])], name=f"nested_{len(pool)}")
        else:
            model = keras.Model(inner_input, inner, name=f"nested_{len(pool)}")
        twin = [t for t in pool if t is not x and t.shape[1:] == x.shape[1:]]
        if twin and draw.random() < 0.5:
            pool.append(model(twin[0]))
        return model(x)

    for _ in range(draw.randint(*steps)):
        x = pool[-1] if draw.random() < 0.5 else draw.choice(pool)
        move = draw.random()
        if move < 0.15 and len(pool) > 1:
            other = draw.choice([t for t in pool if t is not x])
            other = match(x, other)
            if other is not None:
                merge = draw.choice([L.Add(), L.Multiply(), L.Average(), L.Subtract(), L.Maximum()])
                pool.append(merge([x, other]))
                continue
        if move < 0.25:
            siblings = [t for t in pool if t is not x and t.shape[1:-1] == x.shape[1:-1] and rank(t) == rank(x)]
            if siblings:
                pool.append(L.Concatenate()([x, draw.choice(siblings)]))
                continue
        if move < 0.35:
            pool.append(nested(x))
            continue
        pool.append(grow(x))

    heads = []
    for tensor in [pool[-1]] + ([draw.choice(pool)] if draw.random() < 0.3 else []):
        if rank(tensor) > 1:
            tensor = L.Flatten()(tensor)
        heads.append(L.Dense(2)(tensor) if tensor.shape[-1] != 2 or draw.random() < 0.7 else tensor)
    outputs = [h for i, h in enumerate(heads) if all(h is not g for g in heads[:i])]
    model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=f"fuzz_{seed}")
    xs = arrays if len(arrays) > 1 else arrays[0]
    ys = [data.standard_normal((N, 2)).astype("float32") for _ in outputs]
    return model, xs, ys if len(ys) > 1 else ys[0], "mse"
