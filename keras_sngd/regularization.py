"""A consumer's own kernel regularizer, kept on the effective kernel `W = U W'`.

After `reconstruct`, the layer a `LocalFisher` feeds holds the whitened kernel `W'` and computes
`(x U) W' = x W`. A kernel regularizer the user gave that layer (`Dense(kernel_regularizer=L2(1e-4))`)
is attached to the variable `W'`, so left alone it would penalize `R(W')` instead of `R(W)`: a different
loss (for L2, `lambda ||U^-1 W||^2`, a penalty weighted by the local Fisher), whose value would also jump
at every function-preserving refresh (`W' <- M W'` keeps `W`, not `W'`). `EffectiveKernelRegularizer`
replaces the variable's regularizer by

```
R_eff(W') = R(U W')        (U held fixed: no gradient flows into the LocalFisher's state)
```

so the training loss is the original model's loss at the same effective weights, at every step and
across refreshes. Its gradient with respect to `W'` is `U^T R'(W)`, and the step it makes on `W` is
`U U^T R'(W) = G_d^-1 R'(W)`: SNGD with a regularizer is then the natural gradient of the regularized
loss (the paper's Proposition 1 applied to `L + R`), where a penalty on `W'` would not be.

Which `U`: the one the forward pass used. On TensorFlow and PyTorch a due step refreshes `U` and
re-expresses `W'` before the consumer reads them, so the layer's current state is consistent. On JAX a
refresh step's forward pass still uses the old `U` (the new one is stored for the next step, and `W'` is
re-expressed by the optimizer, `keras_sngd.handoff`), so the layer records the `U` of its forward pass
for the loss computed in the same trace.

Cost: `U W'` once per step, `O(d^2 k)` for a dense `U` and a `(d, k)` kernel, `O(d r k)` for a low-rank
one; only for consumers that have a kernel regularizer. `fold` gives the folded layer its original
regularizer back (from its config), and saving stores the original: this wrapper lives on the variable
only, like the constraint of `keras_sngd.handoff`.
"""

import keras


class EffectiveKernelRegularizer(keras.regularizers.Regularizer):
    """`previous(U W')`: the consumer's own regularizer on its effective kernel (see the module docstring).

    Args:
        fisher: the `LocalFisher` before the consumer.
        binding: the consumer's `keras_sngd.binding.Binding`.
        previous: the regularizer the kernel had (a callable on a kernel value).
    """

    def __init__(self, fisher, binding, previous):
        self.fisher = fisher
        self.binding = binding
        self.previous = previous

    def __call__(self, kernel):
        return self.previous(self.fisher.effective_kernel(self.binding, kernel))

    def get_config(self):
        # Installed on the variable only (the layer's config keeps the user's regularizer).
        return self.previous.get_config() if hasattr(self.previous, "get_config") else {}


def user_regularizer(variable):
    """The user's own regularizer on `variable`, or None: an `EffectiveKernelRegularizer` is looked
    through to the regularizer it wraps."""
    regularizer = getattr(variable, "regularizer", None)
    while isinstance(regularizer, EffectiveKernelRegularizer):
        regularizer = regularizer.previous
    return regularizer


def install_effective_regularizer(fisher, binding):
    """Put `EffectiveKernelRegularizer` on `binding`'s kernel if it has a regularizer (once per LocalFisher)."""
    regularizer = getattr(binding.kernel, "regularizer", None)
    if regularizer is None:
        return
    if isinstance(regularizer, EffectiveKernelRegularizer):
        if regularizer.fisher is fisher:
            return
        regularizer = user_regularizer(binding.kernel)
    binding.kernel.regularizer = EffectiveKernelRegularizer(fisher, binding, regularizer)
