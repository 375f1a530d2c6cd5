"""Layer-wise NTK decomposition: which layers' parameters make up the NTK.

The NTK is a sum over parameters, so it splits exactly over disjoint groups of
layers: contribution `g` is the NTK of the network in which only group `g`
trains (every other layer frozen), and the contributions sum to the full NTK.

:func:`ntk_decomposition` computes all contributions analytically in *one*
pass over the network. Every NT `kernel_fn` is affine in the incoming NTK,

    ntk_out = L_nngp(ntk_in) + P(nngp_in),

so at each layer one `jax.jvp` of `ntk -> kernel_fn(k with ntk)` at `ntk = 0`,
vmapped over the stack of contributions accumulated so far, gives the outgoing
NNGP and the layer's own parameter term `P` (the primal, computed once: it does
not depend on the tangents) and `L` applied to every contribution (the
tangents); `P` is then added to the layer's own group. Only groups that have
started are carried, so the NNGP is computed once instead of once per group,
and the NTK work is about half that of one frozen network per group.

:func:`empirical_ntk_decomposition` is the finite-width counterpart: one
block of parameter leaves per group, every block computed by
:func:`nt_frozen.structured.block_ntks` (one forward and one batched backward
pass for the structured leaves, NT on the network restricted to the block's
leaves for the rest).

Modules: :mod:`~nt_frozen.decomposition.groups` (groups, their parsing and
defaults), :mod:`~nt_frozen.decomposition.analytic`,
:mod:`~nt_frozen.decomposition.empirical`.

Example:
  >>> import jax
  >>> from nt_frozen import stax, ntk_decomposition
  >>> layers = [stax.Dense(64), stax.Relu(), stax.Dense(1)]
  >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  >>> decomposition = ntk_decomposition(layers, input_shape=x.shape)
  >>> parts = decomposition(x)
  >>> parts.shape, decomposition.labels
  ((2, 3, 3), ('0:Dense', '2:Dense'))
  >>> full = stax.serial(*layers)[2](x, None, "ntk")
  >>> bool(jax.numpy.allclose(parts.sum(0), full))
  True
"""

from nt_frozen.decomposition.analytic import NTKDecomposition, ntk_decomposition
from nt_frozen.decomposition.empirical import (
    EmpiricalNTKDecomposition,
    empirical_ntk_decomposition,
)
from nt_frozen.decomposition.groups import Group, Groups, GroupSpec

__all__ = [
    "EmpiricalNTKDecomposition",
    "Group",
    "GroupSpec",
    "Groups",
    "NTKDecomposition",
    "empirical_ntk_decomposition",
    "ntk_decomposition",
]
