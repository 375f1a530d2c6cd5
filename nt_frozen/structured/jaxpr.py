"""A flat program: a jaxpr with nested calls inlined and values numbered.

The structured path reads and replays `apply_fn` as one straight list of
equations, so that a leaf's way to the output is a walk over value ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from nt_frozen._compat import bind_equation


@dataclasses.dataclass(frozen=True)
class Lit:
    val: Any


@dataclasses.dataclass(frozen=True)
class Eqn:
    prim: Any
    params: dict
    ins: tuple  # value ids (int) or Lit
    outs: tuple[int, ...]


@dataclasses.dataclass
class Program:
    eqns: list
    consts: dict  # id -> value
    avals: dict  # id -> aval (shape and dtype)
    invars: list
    outvars: list


# Call-like primitives whose body is inlined: differentiating the inlined body
# is what differentiating the call does (`remat2` is `jax.checkpoint`).
INLINE = {"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint"}


def sub_jaxpr(params: dict) -> tuple[Any, list] | None:
    """The (jaxpr, consts) held by a call-like primitive's params, or None."""
    for value in params.values():
        if isinstance(value, jex_core.ClosedJaxpr):
            return value.jaxpr, value.consts
        if isinstance(value, jex_core.Jaxpr):
            return value, []
    return None


def flatten(closed) -> Program:
    prog = Program([], {}, {}, [], [])
    counter = iter(range(1 << 62))

    def new(aval) -> int:
        i = next(counter)
        prog.avals[i] = aval
        return i

    def walk(jaxpr, consts, in_refs):
        env = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = new(v.aval)
            prog.consts[env[v]] = c
        env.update(zip(jaxpr.invars, in_refs))

        def ref(a):
            return Lit(a.val) if isinstance(a, jex_core.Literal) else env[a]

        for eqn in jaxpr.eqns:
            ins = tuple(ref(a) for a in eqn.invars)
            sub = sub_jaxpr(eqn.params)
            if eqn.primitive.name in INLINE and sub is not None:
                outs = walk(*sub, ins)
            else:
                outs = [new(v.aval) for v in eqn.outvars]
                prog.eqns.append(Eqn(eqn.primitive, eqn.params, ins, tuple(outs)))
            env.update(zip(eqn.outvars, outs))
        return [ref(a) for a in jaxpr.outvars]

    prog.invars = [new(v.aval) for v in closed.jaxpr.invars]
    prog.outvars = walk(closed.jaxpr, closed.consts, prog.invars)
    return prog


def shape_of(prog: Program, r) -> tuple[int, ...]:
    return tuple(np.shape(r.val)) if isinstance(r, Lit) else tuple(prog.avals[r].shape)


def dtype_of(prog: Program, r):
    return np.result_type(r.val) if isinstance(r, Lit) else prog.avals[r].dtype


def inexact(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def bind(eqn: Eqn, ins):
    return bind_equation(eqn.prim, eqn.params, list(ins))


def evaluate(prog: Program, in_values, eps: dict, record: set):
    """Run `prog`, adding `eps[k]` to the output of equation `k`; also return
    the values of the ids in `record`."""
    env = dict(prog.consts)
    env.update(zip(prog.invars, in_values))

    def read(r):
        return r.val if isinstance(r, Lit) else env[r]

    for k, eqn in enumerate(prog.eqns):
        ans = bind(eqn, map(read, eqn.ins))
        outs = list(ans) if eqn.prim.multiple_results else [ans]
        if k in eps:
            outs[0] = outs[0] + eps[k]
        env.update(zip(eqn.outs, outs))
    return [read(r) for r in prog.outvars], {i: env[i] for i in record}
