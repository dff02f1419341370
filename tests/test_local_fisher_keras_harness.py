"""Keras's own layer test harness (`keras.src.testing.TestCase.run_layer_test`) on LocalFisher: build,
call, config round trip, `.keras` saving, masking, a `fit`, and mixed precision, for several input ranks and
feature axes."""

import pytest
from keras.src import testing

from keras_sngd import LocalFisher

# second_moment, mean, statistics_weight, inverse_root and four int32 counters; `shift` when centered;
# `leverage` and `batch_rows` with `leverage_scaling=True`.
STATE_VARIABLES = 8

CASES = [
    # (input shape, LocalFisher arguments): before a Dense, an RNN, a channels-last and a channels-first Conv.
    ((4, 6), {}),
    ((3, 5, 4), {"update_every": 1}),
    ((2, 4, 4, 3), {"update_every": 1, "center": True}),
    ((2, 3, 4, 4), {"axis": 1, "update_every": 1}),
    ((4, 6), {"update_every": 1, "leverage_scaling": True}),
]


class Harness(testing.TestCase):
    """Holds Keras's harness; it has no `test_` methods of its own, pytest runs the cases below."""

    def run_case(self, input_shape, arguments):
        self.run_layer_test(
            LocalFisher,
            init_kwargs=arguments,
            input_shape=input_shape,
            expected_output_shape=input_shape,
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=(STATE_VARIABLES + int(arguments.get("center", False))
                                                + 2 * int(arguments.get("leverage_scaling", False))),
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=True,
        )


@pytest.mark.parametrize("input_shape, arguments", CASES)
def test_harness_case(input_shape, arguments):
    Harness("run_case").run_case(input_shape, arguments)
