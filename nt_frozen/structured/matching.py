"""Which trainable leaves enter the network through one linear operation.

A leaf matches when its only way to the output is a chain `L` of scalings,
floating casts and reshapes into one `dot_general`, convolution or bias `add`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from nt_frozen.structured.jaxpr import Lit, Program, dtype_of, inexact, shape_of

# Linear in their (single) non-constant operand; `mul`/`div` by a constant.
_CHAIN = {
    "convert_element_type", "copy", "copy_p", "neg", "reduce_precision",
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "mul", "div",
}  # fmt: skip
# Chain ops that only scale: the Gram form needs `L(p) = s * p`.
_SCALAR_CHAIN = {"convert_element_type", "copy", "copy_p", "neg", "mul", "div"}


@dataclasses.dataclass(frozen=True)
class Target:
    leaf: int  # index among all parameter leaves
    chain: tuple[int, ...]  # equation indices of L
    eqn: int  # equation index of E
    q_pos: int  # operand position of L(p) in E
    a_id: int  # the other operand
    a_axis: int
    z_axis: int
    gram: bool  # a 2-D Dense-like leaf with a scalar chain


def taint(prog: Program, sources) -> set:
    tainted = set(sources)
    for eqn in prog.eqns:
        if any(not isinstance(r, Lit) and r in tainted for r in eqn.ins):
            tainted.update(eqn.outs)
    return tainted


def uses_of(prog: Program) -> dict:
    uses: dict = {}
    for k, eqn in enumerate(prog.eqns):
        for pos, r in enumerate(eqn.ins):
            if not isinstance(r, Lit):
                uses.setdefault(r, []).append((k, pos))
    for r in prog.outvars:
        if not isinstance(r, Lit):
            uses.setdefault(r, []).append((None, None))
    return uses


def match(prog, axes, uses, tainted, leaf, vid) -> Target | str:
    """The target of leaf `vid`, or the reason it has none."""
    chain, cur, scalar = [], vid, True
    while True:
        us = uses.get(cur, [])
        if len(us) != 1 or us[0][0] is None:
            return f"used {len(us)} times" if len(us) != 1 else "is an output"
        k, pos = us[0]
        eqn = prog.eqns[k]
        name = eqn.prim.name
        others = [r for i, r in enumerate(eqn.ins) if i != pos]
        if name in _CHAIN and all(
            isinstance(r, Lit) or (r not in tainted and axes[r] is None) for r in others
        ):
            if name == "div" and pos != 0:
                return "divides by the parameter"
            if name == "convert_element_type" and not (
                inexact(dtype_of(prog, cur)) and inexact(eqn.params["new_dtype"])
            ):
                # Only casts between floating dtypes are linear; rounding to
                # an integer or boolean has zero derivative.
                to = np.dtype(eqn.params["new_dtype"]).name
                return f"is cast to {to} (not linear)"
            if name in ("mul", "div") and math.prod(shape_of(prog, others[0])) != 1:
                scalar = False
            scalar = scalar and name in _SCALAR_CHAIN
            chain.append(k)
            cur = eqn.outs[0]
            continue
        break
    if len(eqn.ins) != 2 or isinstance(others[0], Lit):
        return f"enters {name}"
    a = others[0]
    z_axis = axes[eqn.outs[0]]
    if axes[a] is None or z_axis is None:
        return f"enters {name} without the example axis"
    q_shape = shape_of(prog, cur)
    if name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        a_batch = (lb, rb)[1 - pos]
        if axes[a] in a_batch:
            return "dot_general batches the parameter with the examples"
        q_contract = (lc, rc)[pos]
        gram = scalar and len(q_shape) == 2 and len(q_contract) == 1 and not lb
    elif name == "conv_general_dilated":
        if pos != 1:
            return "is a convolution's input"
        gram = False
    elif name in ("add", "sub"):
        if len(q_shape) == len(shape_of(prog, a)) and q_shape[z_axis] != 1:
            return f"{name} along the example axis"
        if len(q_shape) not in (0, len(shape_of(prog, a))):
            return f"{name} with an unexpected broadcast"
        gram = False
    else:
        return f"enters {name}"
    return Target(leaf, tuple(chain), k, pos, a, axes[a], z_axis, gram)
