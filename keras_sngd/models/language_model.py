"""A word-level LSTM language model (Penn Treebank style)."""

import keras

from keras_sngd.models._validation import check_name
from keras_sngd.models._validation import check_positive_int
from keras_sngd.models._validation import check_rate

MAX_LSTM_LAYERS = 3


def lstm_language_model(vocabulary_size, num_layers=2, units=200, embedding_dim=200, dropout=0.0,
                        name="lstm_language_model"):
    """A word-level LSTM language model: next-token logits at every time step.

    Architecture: `Embedding(vocabulary_size, embedding_dim)` -> `num_layers` x
    `LSTM(units, return_sequences=True)` -> `Dense(vocabulary_size)`, the logits for the next token at each
    position (no softmax; train with `SparseCategoricalCrossentropy(from_logits=True)` on targets shifted by
    one). With `dropout > 0`, a `Dropout(dropout)` is put on every non-recurrent connection, as in Zaremba et
    al. (2014): after the embedding, between consecutive LSTMs and before the output Dense. The input is a
    batch of int token ids of shape `(batch, time)`, any sequence length. With the defaults (two layers of
    200 units) this is the "small" Penn Treebank model of Zaremba et al., the kind of network of Liu et al.'s
    language-modelling experiments. `reconstruct` inserts `num_layers + 1` `LocalFisher` layers: one before
    each LSTM (on its input kernel; the recurrent kernel is left alone) and one before the output Dense;
    the Embedding is reported as skipped (a lookup has no kernel over input features).

    Args:
        vocabulary_size: int >= 2, the number of token ids (inputs in `[0, vocabulary_size)`) and of output
            logits. No default.
        num_layers: int in 1..3, the number of stacked LSTM layers. Defaults to `2`.
        units: int >= 1, each LSTM's number of units. Defaults to `200`.
        embedding_dim: int >= 1, the embedding size. Defaults to `200`.
        dropout: float in [0, 1), the dropout rate on non-recurrent connections; `0.0` adds no Dropout
            layer. Defaults to `0.0`.
        name: the model's name. Defaults to `"lstm_language_model"`.

    Returns:
        A `keras.Sequential` model, built, with input shape `(None, None)` and dtype int32.
    """
    vocabulary_size = check_positive_int("vocabulary_size", vocabulary_size, minimum=2)
    num_layers = check_positive_int("num_layers", num_layers, minimum=1, maximum=MAX_LSTM_LAYERS)
    units = check_positive_int("units", units)
    embedding_dim = check_positive_int("embedding_dim", embedding_dim)
    dropout = check_rate("dropout", dropout)
    name = check_name("name", name)

    layers = [keras.Input((None,), dtype="int32", name="tokens"),
              keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")]
    for index in range(1, num_layers + 1):
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{index}"))
        layers.append(keras.layers.LSTM(units, return_sequences=True, name=f"lstm_{index}"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name=f"dropout_{num_layers + 1}"))
    layers.append(keras.layers.Dense(vocabulary_size, name="logits"))
    return keras.Sequential(layers, name=name)
