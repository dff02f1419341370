"""XLA's compile time for the pieces of a LocalFisher refresh, on the JAX backend (CPU).

On JAX a LocalFisher's refresh is compiled into the train step (one XLA program), so each piece's
compile time is part of the first `fit`'s. This compiles each piece on its own, `--repeats` times (each
time with a different constant folded in, so that no compilation cache answers), and prints the median
and the fastest:

    KERAS_BACKEND=jax python benchmarks/jax_refresh_compile.py [--repeats 5]

Pieces: the pre-scaling of the Newton-Schulz iteration (`scaling="power"`, what the warm refresh uses),
the coupled iteration, the warm refresh (`keras_sngd.refresh.warm_refresh`), the drift estimate, each at
d = 80 (the paper MLP's hidden width), and the low-rank refresh at d = 784, rank 64 (its pixel layer).
"""

import argparse
import importlib
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compile_times(function, arguments, repeats):
    import jax

    times = []
    for repeat in range(repeats):
        factor = 1.0 + 1e-3 * (repeat + 1)  # a new program each time: no cached executable

        def scaled(first, *rest, factor=factor):
            return function(first * factor, *rest)

        lowered = jax.jit(scaled).lower(*arguments)
        start = time.perf_counter()
        lowered.compile()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("Run with KERAS_BACKEND=jax.")
    newton_schulz = importlib.import_module("keras_sngd.newton_schulz")
    from keras_sngd.low_rank import initial_basis
    from keras_sngd.low_rank import low_rank_refresh
    from keras_sngd.refresh import warm_refresh
    from keras_sngd.refresh import whitening_drift

    hidden, pixels = jnp.eye(80), jnp.eye(784)
    basis = jnp.asarray(initial_basis(784, 64))
    pieces = [
        ("pre-scaling, power estimate, d=80", lambda a: newton_schulz._prescale(a, "power", jnp.eye(80)), (hidden,)),
        ("coupled Newton-Schulz, d=80", lambda a: newton_schulz.coupled_newton_schulz(a, scaling="power", tolerance=1e-5),
         (hidden,)),
        ("warm refresh, d=80", lambda g, u: warm_refresh(g, u, 0.01), (hidden, hidden)),
        ("drift estimate, d=80", lambda g, u: whitening_drift(g, u, 0.01), (hidden, hidden)),
        ("low-rank refresh, d=784, rank 64", lambda g, u, b, i: low_rank_refresh(g, u, b, 1.0, i),
         (pixels, pixels, basis, jnp.int32(3))),
    ]
    print(f"keras {keras.__version__}, jax {jax.__version__}, {jax.devices()[0].platform}; XLA compile time, "
          f"{args.repeats} compilations each")
    print("| piece | median s | fastest s |")
    print("|---|---|---|")
    for name, function, arguments in pieces:
        median, fastest = compile_times(function, arguments, args.repeats)
        print(f"| {name} | {median:.3f} | {fastest:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
