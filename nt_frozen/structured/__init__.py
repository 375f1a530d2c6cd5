"""Structured empirical NTKs: the fastest exact path, chosen by default.

The empirical NTK is a sum over parameter leaves, `Θ = Σ_p J_p J_pᵀ`. For a
leaf `p` that reaches the network only through one linear operation
`z = E(a, L(p))` (a `dot_general`, a `conv_general_dilated` or a bias `add`;
`L` a chain of scalings, casts and reshapes), `J_p = δ_z ∘ ∂z/∂p` with
`δ_z = ∂f/∂z`. So one batched backward pass, with a zero perturbation added at
every such `z`, gives every `δ_z` at once, and the forward pass records every
`a`; the Jacobians of the parameters themselves are never built. For a `Dense`
leaf `W` (`z = a @ W`) the contraction is the Gram form

    Θ_W(x1, x2) = s² (a1 a2ᵀ) ⊙ (δ1 δ2ᵀ)      (s: the scale L applies to W)

at `O(N² (fan_in + fan_out))`; other matched leaves take the per-example
Jacobian `J_p = vjp(p ↦ E(a_n, L(p)))(δ_n)` from the recorded `a` and `δ`
(cheap for biases and convolution kernels), and a `Dense` leaf applied at many
positions (e.g. inside attention) takes whichever of the two forms costs fewer
flops. Scale factors are never assumed (`W_std / sqrt(fan_in)`, the standard
parameterization, ...): `δ` is taken at the raw operation and `s` is read off
`L`, so what `apply_fn` does to each leaf is what is differentiated.

How the path is chosen (:func:`ntk_plan` reports it):

1. `apply_fn(params, x)` is traced to a jaxpr (nested `jit`s inlined) and
   every value's *example axis* is tracked from `x`'s axis 0. The network
   treats examples independently when every operation keeps row `n` of its
   outputs a function of row `n` of its inputs (elementwise ops, reductions,
   `dot_general`s and convolutions that do not contract or window over the
   example axis, reshapes that keep it, `scan` carrying it, ...). Anything
   else, or an unknown primitive touching the example axis, counts as
   dependent.
2. Independent network, single array output, no `apply_fn_kwargs`, `x` and
   `x2` arrays of the same trailing shape: each trainable leaf that matches
   the pattern above takes the structured path; every other trainable leaf
   falls back to NT: implementation 2 with `vmap_axes=0`, or the user's
   `vmap_axes` if given; the results are summed (the NTK is additive over
   leaves, so the sum is exact).
3. Otherwise the whole network falls back to NT: implementation 2 with
   `vmap_axes=0` when the examples are independent, else without
   `vmap_axes` (the user's `vmap_axes`, if given, wins). Implementation 2
   because it traces every network NT supports (implementation 3 fails on
   `stax.repeat`'s `scan` on current JAX).

Frozen leaves (inside :class:`~nt_frozen.params.FrozenParams`) are constants
on every path: they contribute nothing and cost no Jacobian. An explicit
`implementation=` to :func:`nt_frozen.empirical_ntk_fn` bypasses all of this
and calls NT exactly as asked.
"""

from nt_frozen.structured.contract import block_ntks
from nt_frozen.structured.plan import LeafPlan, NTKPlan, ntk_plan

__all__ = ["LeafPlan", "NTKPlan", "block_ntks", "ntk_plan"]
