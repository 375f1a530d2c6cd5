"""The network families of the validation sweep: the built-in registry and
users' own networks (`module:function`)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nt_frozen._compat import stax
from nt_frozen._stax_utils import Layer
from nt_frozen.frozen import Frozen
from nt_frozen.networks import (
    MLP_WEIGHTS,
    cnn_layers,
    mlp_layers,
    rated_mlp_layers,
    rated_residual_layers,
    residual_layers,
)
from nt_frozen.validation.controls import CONTROLS

# `build(width, freeze)` returns the layers of a `stax.serial` network; `freeze`
# is applied to the layers that are frozen (`Frozen`, or a control).
Builder = Callable[..., Sequence[Layer]]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A network family for the sweep.

    Attributes:
      name: short name used in tables, JSON and plots.
      description: one line, shown in the table.
      build: `build(width, freeze=Frozen)` -> layers of a `stax.serial`; the
        sweep passes each control as `freeze`. A builder without a `freeze`
        parameter returns the frozen network only, and gets no controls.
      input_shape: shape of the inputs `x` (batch first).
      width_divisor: the layer width is `width // width_divisor` (CNN channels
        are cheaper to keep lower than MLP widths).
      controls: wrong networks, `{name: build(width)}`, scored in place of
        :data:`CONTROLS` (which act through `freeze`): e.g. for per-layer
        rates, the unrated network and the rates swapped.
      kernel_width_free: the analytic kernels (frozen and controls) are the
        same at every width, so the sweep traces them at one width only. True
        in NTK parameterization, whose out-channel counts drop out; false in
        standard parameterization (the NTK scales with the width) and for a
        builder whose hyperparameters (e.g. `W_std`) depend on it; hence off
        unless declared, and tested for every built-in that declares it.
      width_label: what `layer_width` counts, as the report names it:
        "width" (hidden units) or "channels" (a CNN).

    Example:
      >>> from nt_frozen import stax
      >>> arch = Architecture("tiny", "Dense-Frozen(Dense)",
      ...     lambda n, freeze=Frozen: [stax.Dense(n), freeze(stax.Dense(1))],
      ...     input_shape=(4, 3))
      >>> arch.has_controls, arch.control_names
      (True, ('unfrozen', 'identity_guess'))
    """

    name: str
    description: str
    build: Builder
    input_shape: tuple[int, ...]
    width_divisor: int = 1
    controls: Mapping[str, Builder] | None = None
    kernel_width_free: bool = False
    width_label: str = "width"

    @property
    def has_controls(self) -> bool:
        return (
            self.controls is not None
            or "freeze" in inspect.signature(self.build).parameters
        )

    @property
    def control_names(self) -> tuple[str, ...]:
        return tuple(CONTROLS if self.controls is None else self.controls)

    def control_network(self, name: str, width: int) -> Layer:
        if self.controls is None:
            return self.network(width, CONTROLS[name])
        return _as_triple(self.controls[name](self.layer_width(width)), self.name)

    def layer_width(self, width: int) -> int:
        return max(1, width // self.width_divisor)

    def network(self, width: int, freeze: Callable[[Layer], Layer] = Frozen) -> Layer:
        n = self.layer_width(width)
        takes_freeze = "freeze" in inspect.signature(self.build).parameters
        built = self.build(n, freeze=freeze) if takes_freeze else self.build(n)
        return _as_triple(built, self.name)


def _as_triple(built: Any, name: str) -> Layer:
    if (
        isinstance(built, (list, tuple))
        and len(built) == 3
        and all(callable(f) and not isinstance(f, (list, tuple)) for f in built)
    ):
        return tuple(built)
    if isinstance(built, (list, tuple)):
        return stax.serial(*built)
    raise TypeError(
        f"architecture {name!r}: the builder must return a stax layer triple "
        f"(init_fn, apply_fn, kernel_fn) or a list of layers for stax.serial, "
        f"got {type(built).__name__}."
    )


def _mlp(frozen: set[int], parameterization: str = "ntk") -> Builder:
    def build(n: int, freeze: Callable[[Layer], Layer] = Frozen) -> list[Layer]:
        return mlp_layers(n, MLP_WEIGHTS, frozen, parameterization, freeze)

    return build


def _with_rates(build_layers: Callable[[int, Sequence[float]], list[Layer]]):
    """`rates -> build(width)`, for :func:`_rated`."""
    return lambda rates: lambda n: build_layers(n, rates)


def _rated(name, description, build, rates, input_shape) -> Architecture:
    """An architecture with per-layer `rates`; controls: unrated, rates swapped."""
    return Architecture(
        name,
        description,
        build(rates),
        input_shape,
        controls={
            "unrated": build((1.0,) * len(rates)),
            "swapped_rates": build(tuple(rates)[::-1]),
        },
        kernel_width_free=True,
    )


_MLP_INPUTS = (8, 16)

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            "mlp-frozen-first",
            "MLP 16-n-n-1, NTK param., first Dense frozen",
            _mlp({0}),
            _MLP_INPUTS,
            kernel_width_free=True,
        ),
        Architecture(
            "mlp-frozen-middle",
            "MLP 16-n-n-1, NTK param., middle Dense frozen",
            _mlp({1}),
            _MLP_INPUTS,
            kernel_width_free=True,
        ),
        Architecture(
            "mlp-frozen-last",
            "MLP 16-n-n-1, NTK param., readout Dense frozen",
            _mlp({2}),
            _MLP_INPUTS,
            kernel_width_free=True,
        ),
        Architecture(
            "mlp-readout-only",
            "MLP 16-n-n-1, NTK param., all but the readout frozen (NTK = NNGP)",
            _mlp({0, 1}),
            _MLP_INPUTS,
            kernel_width_free=True,
        ),
        Architecture(
            "mlp-standard-frozen-last",
            "MLP 16-n-n-1, standard param., readout Dense frozen",
            _mlp({2}, "standard"),
            _MLP_INPUTS,  # standard parameterization: the NTK scales with n
        ),
        Architecture(
            "cnn-frozen-conv-block",
            "CNN 4x4x2 images, n/4 channels, frozen Conv+AvgPool block",
            cnn_layers,
            (4, 4, 4, 2),
            width_divisor=4,
            kernel_width_free=True,
            width_label="channels",
        ),
        Architecture(
            "residual-frozen-branch",
            "Dense then residual block whose Relu-Dense branch is frozen",
            residual_layers,
            _MLP_INPUTS,
            kernel_width_free=True,
        ),
        _rated(
            "mlp-rates",
            "MLP 16-n-n-1, NTK param., first Dense x0.1, readout x10 (LearningRate)",
            _with_rates(rated_mlp_layers),
            (0.1, 1.0, 10.0),
            _MLP_INPUTS,
        ),
        _rated(
            "residual-rates",
            "Dense x10, then a residual block whose branch trains x0.1, frozen readout",
            _with_rates(rated_residual_layers),
            (10.0, 0.1, 0.0),
            _MLP_INPUTS,
        ),
    )
}


def load_architecture(spec: str, input_shape: tuple[int, ...] = _MLP_INPUTS):
    """A built-in architecture by name, or a user's `module:function`.

    The user function takes the width and returns a stax triple (or a list of
    layers for `stax.serial`); if it also takes `freeze`, it should apply it to
    the frozen layers (default `Frozen`), and the sweep runs the controls.
    `module` is an importable module name or a path to a `.py` file.

    Example:
      >>> load_architecture("mlp-frozen-middle").name
      'mlp-frozen-middle'
      >>> load_architecture("no-such-net")
      Traceback (most recent call last):
      ...
      ValueError: unknown architecture 'no-such-net': ...
    """
    if spec in ARCHITECTURES:
        return ARCHITECTURES[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown architecture {spec!r}: use one of "
            f"{', '.join(ARCHITECTURES)} or 'module:function' for your own network."
        )
    module_name, _, function_name = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"architecture {spec!r}: no file {path}.")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"architecture {spec!r}: cannot load {path} as Python.")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name.partition(".")[0]:
                raise  # the module exists, but an import inside it failed
            path = Path(*module_name.split(".")).with_suffix(".py")
            here = (
                f"{path} is in the working directory, but that directory is not "
                f"on Python's import path"
                if path.is_file()
                else "the working directory is not on Python's import path"
            )
            raise ImportError(
                f"architecture {spec!r}: no module named {module_name!r} ({here}). "
                f"Pass the file instead, {path}:{function_name}, or set "
                f"PYTHONPATH=. to import from the working directory."
            ) from None
    build = getattr(module, function_name, None)
    if not callable(build):
        raise AttributeError(
            f"architecture {spec!r}: {module_name} has no function {function_name!r}."
        )
    doc = (inspect.getdoc(build) or "").split("\n")[0]
    return Architecture(spec, doc or f"user network {spec}", build, input_shape)
