"""Groups of layers for the layer-wise decomposition: parsing user groups and
the default one group per layer with trainable parameters."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from nt_frozen._stax_utils import PyTree, has_leaves
from nt_frozen.params import split

#: Layer indices of one group: an `int` or a sequence of `int`s.
GroupSpec = int | Sequence[int]
#: `None` (default), a sequence of groups, or a mapping from names to groups.
Groups = Sequence[GroupSpec] | Mapping[str, GroupSpec] | None


@dataclasses.dataclass(frozen=True)
class Group:
    """A named set of layer indices whose parameters train together."""

    label: str
    indices: tuple[int, ...]


def _index(i: Any, n: int, label: str, where: str) -> int:
    try:
        if isinstance(i, bool):  # `True` is an int, but surely not meant as one
            raise TypeError
        index = operator.index(i)
    except TypeError:
        raise TypeError(
            f"{where}: group {label!r} holds {i!r}; a group is a layer index or "
            f"a sequence of layer indices (ints)."
        ) from None
    if not -n <= index < n:
        raise ValueError(
            f"{where}: group {label!r} names layer {index}, but the network has "
            f"{n} layers (indices 0..{n - 1}, or negative from the end)."
        )
    return index % n


def _parse_groups(
    groups: Groups, n: int, names: Sequence[str] | None, where: str
) -> tuple[Group, ...] | None:
    """Validate user groups: disjoint, non-empty, existing layer indices."""
    if groups is None:
        return None
    if isinstance(groups, Mapping):
        items: list[tuple[str | None, Any]] = [
            (str(label), spec) for label, spec in groups.items()
        ]
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        items = [(None, spec) for spec in groups]
    else:
        raise TypeError(
            f"{where}: `groups` must be None, a list of groups or a dict of named "
            f"groups (each a layer index or a list of them), got "
            f"{type(groups).__name__}."
        )
    if not items:
        raise ValueError(
            f"{where}: `groups` is empty; pass at least one group, or None for "
            f"one group per layer with parameters."
        )
    owner: dict[int, str] = {}
    parsed = []
    for position, (label, spec) in enumerate(items):
        shown = label if label is not None else f"groups[{position}]"
        is_many = isinstance(spec, Iterable) and not isinstance(spec, str)
        specs = list(spec) if is_many else [spec]
        indices = tuple(_index(i, n, shown, where) for i in specs)
        if not indices:
            raise ValueError(f"{where}: group {shown!r} is empty.")
        for i in indices:
            if i in owner:
                other = owner[i]
                clash = (
                    f"twice in group {shown!r}"
                    if other == shown
                    else f"in both group {other!r} and group {shown!r}"
                )
                raise ValueError(
                    f"{where}: layer {i} is {clash}. Groups must be disjoint, so "
                    f"that each parameter is counted once; remove it from one."
                )
            owner[i] = shown
        if label is None:
            label = "+".join(
                f"{i}:{names[i]}" if names is not None else str(i) for i in indices
            )
        parsed.append(Group(label, indices))
    return tuple(parsed)


def _default_groups(
    params: Sequence[PyTree], names: Sequence[str] | None
) -> tuple[Group, ...]:
    """One group per entry of `params` with trainable leaves."""
    trainable, _ = split(tuple(params))
    return tuple(
        Group(f"{i}:{names[i]}" if names is not None else str(i), (i,))
        for i, entry in enumerate(trainable)
        if has_leaves(entry)
    )


def _param_shapes(init_fn: Callable, input_shape: PyTree) -> PyTree:
    """The parameters `init_fn` makes for `input_shape`, as shapes only."""
    key = jax.eval_shape(jax.random.PRNGKey, 0)
    return jax.eval_shape(lambda k: init_fn(k, input_shape)[1], key)


def _groups_at_construction(
    init_fn: Callable,
    names: Sequence[str],
    groups: Groups,
    input_shape: PyTree | None,
    where: str,
) -> tuple[Group, ...] | None:
    """The explicit groups, or the default ones when `input_shape` is known;
    None when only a call's inputs can tell."""
    parsed = _parse_groups(groups, len(names), names, where)
    if parsed is None and input_shape is not None:
        return _default_groups(_param_shapes(init_fn, input_shape), names)
    return parsed
