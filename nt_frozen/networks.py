"""Reference networks: the partially trained networks the sweep validates,
the dynamics are trained on, and the tests, benchmarks and notebooks share.

Each builder is defined once, so that "the frozen-middle MLP" means the same
network in a test, the sweep and a notebook. Builders named `*_layers` return
the layers of a `stax.serial` network and take `freeze`, the wrapper applied
to the layers that are frozen (`Frozen`, or a control of the sweep); the
others return the `(init_fn, apply_fn, kernel_fn)` triple.

Constants:
  FREEZING_PATTERNS: which of the three Dense layers of :func:`three_layer_mlp`
    are frozen, by name: `"frozen_middle"`, `"readout_only"` (only the readout
    trains) and `"first_layer_only"` (only the first Dense trains).
  MLP_WEIGHTS: `(W_std, b_std)` of the three Dense layers of the sweep's MLPs.
  FAMILIES: one network per kind of layer (:class:`Family`), for the
    identity tests and the agreement with empirical draws.

Example:
  >>> import jax.numpy as jnp
  >>> from nt_frozen import stax
  >>> _, _, kernel_fn = stax.serial(*mlp_layers(64, frozen={0, 1}))
  >>> k = kernel_fn(jnp.ones((2, 16)), None, ("nngp", "ntk"))
  >>> bool(jnp.allclose(k.ntk, k.nngp))  # readout only: the NTK is the NNGP
  True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from nt_frozen._compat import stax
from nt_frozen._stax_utils import Layer
from nt_frozen.frozen import Frozen
from nt_frozen.rates import LearningRate

__all__ = [
    "FAMILIES",
    "FREEZING_PATTERNS",
    "Family",
    "MLP_WEIGHTS",
    "cnn_layers",
    "freeze_all_but",
    "frozen_family",
    "frozen_middle_mlp",
    "mlp_layers",
    "rated_mlp_layers",
    "rated_residual_layers",
    "residual_layers",
    "three_layer_mlp",
]

Wrap = Callable[[Layer], Layer]

FREEZING_PATTERNS = {
    "frozen_middle": (False, True, False),
    "readout_only": (True, True, False),
    "first_layer_only": (False, True, True),
}

MLP_WEIGHTS = ((1.5, 0.1), (1.4, 0.3), (1.3, 0.2))


def freeze_all_but(layers: Iterable[Layer], keep: Iterable[int]) -> list[Layer]:
    """The layers with every one not indexed in `keep` wrapped in `Frozen`.

    Example:
      >>> from nt_frozen import is_frozen_layer, stax
      >>> layers = freeze_all_but([stax.Dense(2), stax.Relu(), stax.Dense(1)], {2})
      >>> [is_frozen_layer(layer) for layer in layers]
      [True, True, False]
    """
    keep = set(keep)
    return [lyr if i in keep else Frozen(lyr) for i, lyr in enumerate(layers)]


def three_layer_mlp(
    width: int,
    frozen: Sequence[bool] = (False, False, False),
    middle: Wrap | None = None,
    outputs: int = 1,
    w_middle: float = 0.5,
) -> Layer:
    """Dense -> Relu -> Dense(W_std=`w_middle`) -> Relu -> Dense(`outputs`),
    all `b_std=0.1`: the network the dynamics are trained on.

    Args:
      width: hidden width.
      frozen: which of the three Dense layers are wrapped in `Frozen` (see
        `FREEZING_PATTERNS`).
      middle: if given, applied to the middle Dense (after freezing), e.g. a
        control or `LearningRate`.
      outputs: the readout's width.
      w_middle: the middle Dense's `W_std`; the default 0.5 is far from 1, so
        that a frozen layer that passed the NTK through unchanged is visibly
        wrong.

    Returns:
      The `stax.serial` triple `(init_fn, apply_fn, kernel_fn)`.

    Example:
      >>> import jax.numpy as jnp
      >>> _, _, kernel_fn = three_layer_mlp(64, FREEZING_PATTERNS["readout_only"])
      >>> k = kernel_fn(jnp.ones((2, 8)), None, ("nngp", "ntk"))
      >>> bool(jnp.allclose(k.ntk, k.nngp))
      True
    """
    dense = [
        stax.Dense(width, b_std=0.1),
        stax.Dense(width, W_std=w_middle, b_std=0.1),
        stax.Dense(outputs, b_std=0.1),
    ]
    dense = [Frozen(d) if f else d for d, f in zip(dense, frozen)]
    if middle is not None:
        dense[1] = middle(dense[1])
    return stax.serial(dense[0], stax.Relu(), dense[1], stax.Relu(), dense[2])


def frozen_middle_mlp(width: int = 256) -> Layer:
    """Dense -> Relu -> Frozen(Dense(W_std=1.4)) -> Relu -> Dense(2): a small
    network with frozen and trainable parameters, for parameter-tree and
    empirical-kernel checks.

    Example:
      >>> import jax
      >>> from nt_frozen import split
      >>> init_fn, _, _ = frozen_middle_mlp(4)
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 3))
      >>> trainable, frozen = split(params)
      >>> len(jax.tree_util.tree_leaves(frozen))  # the middle Dense's W and b
      2
    """
    return stax.serial(
        stax.Dense(width, b_std=0.1),
        stax.Relu(),
        Frozen(stax.Dense(width, W_std=1.4, b_std=0.1)),
        stax.Relu(),
        stax.Dense(2),
    )


def mlp_layers(
    width: int,
    weights: Sequence[tuple[float, float]] = MLP_WEIGHTS,
    frozen: Iterable[int] = (),
    parameterization: str = "ntk",
    freeze: Wrap = Frozen,
) -> list[Layer]:
    """Dense-Relu-...-Dense(1), one Dense per `(W_std, b_std)` in `weights`,
    with `freeze` applied to the Dense layers indexed in `frozen`.

    Example:
      >>> from nt_frozen import is_frozen_layer
      >>> [is_frozen_layer(layer) for layer in mlp_layers(8, frozen={1})]
      [False, False, True, False, False]
    """
    frozen, layers = set(frozen), []
    for i, (w_std, b_std) in enumerate(weights):
        last = i == len(weights) - 1
        dense = stax.Dense(
            1 if last else width,
            W_std=w_std,
            b_std=b_std,
            parameterization=parameterization,
        )
        layers.append(freeze(dense) if i in frozen else dense)
        if not last:
            layers.append(stax.Relu())
    return layers


def cnn_layers(width: int, freeze: Wrap = Frozen) -> list[Layer]:
    """Conv-Relu-[Conv-AvgPool]-Relu-Flatten-Dense(1) with `width` channels,
    the bracketed block frozen; for 4x4 images.

    `Frozen` freezes the whole block (`Frozen` of a combinator); any other
    `freeze` (a control) wraps its Conv only: the pooling has no parameters,
    and "pass the NTK through unchanged" means nothing across a shape change.

    Example:
      >>> from nt_frozen import is_frozen_layer
      >>> [is_frozen_layer(layer) for layer in cnn_layers(4)]
      [False, False, True, False, False, False]
    """
    conv = stax.Conv(width, (3, 3), padding="SAME", W_std=2.0, b_std=0.1)
    pool = stax.AvgPool((2, 2))
    block = (
        Frozen(stax.serial(conv, pool))
        if freeze is Frozen
        else stax.serial(freeze(conv), pool)
    )
    return [
        stax.Conv(width, (3, 3), padding="SAME", W_std=1.3, b_std=1.0),
        stax.Relu(),
        block,
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1, W_std=1.2),
    ]


def residual_layers(width: int, freeze: Wrap = Frozen) -> list[Layer]:
    """Dense, then a residual block whose Relu-Dense branch is wrapped in
    `freeze`, then Relu-Dense(1).

    Example:
      >>> [type(layer).__name__ for layer in residual_layers(8)]
      ['tuple', 'tuple', 'tuple', 'tuple']
    """
    branch = stax.serial(stax.Relu(), stax.Dense(width, W_std=2.0, b_std=0.3))
    block = stax.serial(
        stax.FanOut(2), stax.parallel(freeze(branch), stax.Identity()), stax.FanInSum()
    )
    return [
        stax.Dense(width, W_std=1.2, b_std=0.2),
        block,
        stax.Relu(),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    ]


def rated_mlp_layers(width: int, rates: Sequence[float]) -> list[Layer]:
    """:func:`mlp_layers` with `LearningRate(Dense_i, rates[i])`.

    Example:
      >>> import jax
      >>> from nt_frozen import learning_rates, stax
      >>> init_fn, _, _ = stax.serial(*rated_mlp_layers(4, (0.1, 1.0, 10.0)))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 16))
      >>> [rates[0] for rates in learning_rates(params) if rates]
      [0.1, 1.0, 10.0]
    """
    rate = iter(rates)  # `mlp_layers` wraps its Dense layers in order
    every = range(len(MLP_WEIGHTS))
    return mlp_layers(
        width, frozen=every, freeze=lambda dense: LearningRate(dense, next(rate))
    )


def rated_residual_layers(width: int, rates: Sequence[float]) -> list[Layer]:
    """:func:`residual_layers` with rates (first Dense, residual branch,
    readout).

    Example:
      >>> import jax
      >>> from nt_frozen import learning_rates, stax
      >>> init_fn, _, _ = stax.serial(*rated_residual_layers(4, (10.0, 0.1, 0.0)))
      >>> _, params = init_fn(jax.random.PRNGKey(0), (1, 16))
      >>> learning_rates(params)[-1]
      (0.0, 0.0)
    """
    first, block, relu, readout = residual_layers(
        width, freeze=lambda branch: LearningRate(branch, rates[1])
    )
    return [
        LearningRate(first, rates[0]),
        block,
        relu,
        LearningRate(readout, rates[2]),
    ]


# --- Families: one network per kind of layer, for identities and agreement ---


def _mlp_family(width: int, parameterization: str = "ntk") -> list[Layer]:
    p = {"parameterization": parameterization}
    return [
        stax.Dense(width, W_std=1.2, b_std=0.3, **p),
        stax.Relu(),
        stax.Dense(width, W_std=1.5, b_std=0.4, **p),
        stax.Relu(),
        stax.Dense(1, W_std=1.5, b_std=0.2, **p),
    ]


def _cnn_family(width: int) -> list[Layer]:
    return [
        stax.Conv(width, (3, 3), padding="SAME", W_std=1.3, b_std=1.0),
        stax.Relu(),
        stax.Conv(width, (3, 3), padding="SAME", W_std=2.0, b_std=0.1),
        stax.AvgPool((2, 2)),
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1, W_std=1.0),
    ]


def _residual_family(width: int) -> list[Layer]:
    branch = stax.serial(stax.Relu(), stax.Dense(width, W_std=1.5, b_std=0.3))
    block = stax.serial(
        stax.FanOut(2), stax.parallel(branch, stax.Identity()), stax.FanInSum()
    )
    return [stax.Dense(width, W_std=1.2, b_std=0.2), block, stax.Relu(), stax.Dense(1)]


def _attention_family(width: int) -> list[Layer]:
    return [
        stax.Dense(width, W_std=1.2, b_std=0.2),
        stax.GlobalSelfAttention(
            width, width, width, n_heads=2, W_out_std=1.5, b_std=0.1
        ),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1),
    ]


def _repeat_family(width: int) -> list[Layer]:
    block = stax.serial(stax.Relu(), stax.Dense(width, W_std=1.5, b_std=0.4))
    return [
        stax.Dense(width, b_std=0.2),
        stax.repeat(block, 3),
        stax.Relu(),
        stax.Dense(1),
    ]


class Family(NamedTuple):
    """A network family: `layers(width)` of a `stax.serial` network, the
    shape of one input, and the index of the layer the frozen variant
    freezes (see :func:`frozen_family`)."""

    layers: Callable[[int], list[Layer]]
    input_shape: tuple[int, ...]
    frozen_index: int


#: One network per kind of layer: Dense in both parameterizations, Conv with
#: pooling, a residual block, attention, `stax.repeat`. In standard
#: parameterization the readout's own term grows with the width and dominates
#: the NTK, so freezing a hidden layer barely shows: its readout is frozen.
FAMILIES: dict[str, Family] = {
    "mlp-ntk": Family(_mlp_family, (6,), 2),
    "mlp-standard": Family(lambda width: _mlp_family(width, "standard"), (6,), 4),
    "cnn": Family(_cnn_family, (3, 3, 2), 2),
    "residual": Family(_residual_family, (6,), 1),
    "attention": Family(_attention_family, (4, 3), 1),
    "repeat": Family(_repeat_family, (6,), 1),
}


def frozen_family(name: str, width: int, freeze: Wrap = Frozen) -> list[Layer]:
    """The layers of family `name` at `width` with `freeze` applied to its
    `frozen_index` layer.

    Example:
      >>> from nt_frozen import is_frozen_layer
      >>> [is_frozen_layer(layer) for layer in frozen_family("mlp-ntk", 8)]
      [False, False, True, False, False]
    """
    family = FAMILIES[name]
    layers = family.layers(width)
    layers[family.frozen_index] = freeze(layers[family.frozen_index])
    return layers
