"""The validation sweep: analytic frozen NTK vs finite-width empirical NTKs.

For each architecture and width `n` the sweep draws `S` parameter sets of the
finite network, computes each draw's empirical NTK (trainable parameters only)
and compares it with the analytic NTK of the same frozen network:

- single-draw relative Frobenius errors, whose root mean square `e(n)` must
  fall like `n^{-1/2}` (central limit theorem over the hidden units); the
  log-log slope of `e(n)` is fitted with a bootstrap standard error over draws;
- the Monte Carlo mean's agreement score at the largest width
  (:func:`nt_frozen.convergence.agreement`): O(1) for the right kernel.

An architecture PASSes when the slope is within `SLOPE_SIGMAS` bootstrap
standard errors of -1/2 and the score at the largest width is at most
`MAX_SCORE`. The same draws are also scored against two wrong kernels, which
must FAIL: the unfrozen network's NTK, and the "identity" guess (a frozen layer
passes the NTK through unchanged). For a wrong kernel the error levels off at
the kernels' distance, so the slope flattens and the score grows like
`sqrt(n S)`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_frozen._compat import get_req, layer, requires, stax
from nt_frozen.convergence import MAX_SCORE, agreement, relative_frobenius_error
from nt_frozen.empirical import empirical_ntk_fn
from nt_frozen.frozen import Frozen, Layer
from nt_frozen.rates import LearningRate

# A slope further than this many bootstrap standard errors from -1/2 fails.
SLOPE_SIGMAS = 3.0
# Floor on the slope tolerance: with few widths and draws the bootstrap can
# understate the spread, and the O(1/n) bias bends e(n) slightly below -1/2.
MIN_SLOPE_TOLERANCE = 0.1
BOOTSTRAP_RESAMPLES = 400
# Controls closer than this (relative) to the frozen kernel are the same kernel
# (e.g. the identity guess for a frozen *first* layer, whose input NTK is 0).
SAME_KERNEL_RTOL = 1e-6

# `build(width, freeze)` returns the layers of a `stax.serial` network; `freeze`
# is applied to the layers that are frozen (`Frozen`, or a control).
Builder = Callable[..., Sequence[Layer]]


@layer
def IdentityGuess(wrapped: Layer) -> Layer:  # noqa: N802 (stax layers are CamelCase)
    """The wrong "frozen" rule: NNGP as `wrapped`, NTK passed through unchanged.

    A control for validation: it ignores the `W_std**2` factor of a frozen
    `Dense`/`Conv` and the derivative kernel of a frozen nonlinearity.
    """
    init_fn, apply_fn, kernel_fn = wrapped

    @requires(**get_req(kernel_fn, {}))
    def guess_kernel_fn(k, **kwargs):
        out = kernel_fn(k, **kwargs)
        if k.ntk is None:
            return out
        if k.ntk.ndim == 0:  # NT's input kernel carries the NTK as a scalar 0.
            return out.replace(ntk=jnp.broadcast_to(k.ntk, out.ntk.shape))
        if out.ntk.shape != k.ntk.shape:
            raise ValueError(
                f"IdentityGuess({getattr(kernel_fn, '__name__', 'layer')}): the "
                f"layer maps NTK shape {k.ntk.shape} to {out.ntk.shape}, so "
                f"'unchanged' is undefined; apply the guess to its shape-preserving "
                f"layers with parameters instead."
            )
        return out.replace(ntk=k.ntk)

    return init_fn, apply_fn, guess_kernel_fn


def _unfrozen(layer: Layer) -> Layer:
    return layer


CONTROLS: dict[str, Callable[[Layer], Layer]] = {
    "unfrozen": _unfrozen,
    "identity_guess": IdentityGuess,
}


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
    """

    name: str
    description: str
    build: Builder
    input_shape: tuple[int, ...]
    width_divisor: int = 1
    controls: Mapping[str, Builder] | None = None

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


def _mlp(weights, frozen: set[int], parameterization: str = "ntk") -> Builder:
    """Dense-Relu-...-Dense(1) with `(W_std, b_std)` per Dense, some frozen."""

    def build(n: int, freeze: Callable[[Layer], Layer] = Frozen) -> list[Layer]:
        layers = []
        for i, (w_std, b_std) in enumerate(weights):
            out = 1 if i == len(weights) - 1 else n
            dense = stax.Dense(
                out, W_std=w_std, b_std=b_std, parameterization=parameterization
            )
            layers.append(freeze(dense) if i in frozen else dense)
            if i < len(weights) - 1:
                layers.append(stax.Relu())
        return layers

    return build


_MLP_WEIGHTS = ((1.5, 0.1), (1.4, 0.3), (1.3, 0.2))


def _cnn(n: int, freeze: Callable[[Layer], Layer] = Frozen) -> list[Layer]:
    conv = stax.Conv(n, (3, 3), padding="SAME", W_std=2.0, b_std=0.1)
    pool = stax.AvgPool((2, 2))
    # The frozen network freezes the whole block (Frozen of a combinator). The
    # controls act on its conv only: the pooling has no parameters, and "pass
    # the NTK through unchanged" means nothing across a shape change.
    block = (
        Frozen(stax.serial(conv, pool))
        if freeze is Frozen
        else stax.serial(freeze(conv), pool)
    )
    return [
        stax.Conv(n, (3, 3), padding="SAME", W_std=1.3, b_std=1.0),
        stax.Relu(),
        block,
        stax.Relu(),
        stax.Flatten(),
        stax.Dense(1, W_std=1.2),
    ]


def _residual(n: int, freeze: Callable[[Layer], Layer] = Frozen) -> list[Layer]:
    branch = stax.serial(stax.Relu(), stax.Dense(n, W_std=2.0, b_std=0.3))
    block = stax.serial(
        stax.FanOut(2), stax.parallel(freeze(branch), stax.Identity()), stax.FanInSum()
    )
    return [
        stax.Dense(n, W_std=1.2, b_std=0.2),
        block,
        stax.Relu(),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    ]


def _rated_mlp(rates: Sequence[float]) -> Builder:
    """The `_mlp` network with `LearningRate(Dense_i, rates[i])`."""

    def build(n: int) -> list[Layer]:
        rate = iter(rates)  # `_mlp` wraps its Dense layers in order
        every = set(range(len(_MLP_WEIGHTS)))
        return _mlp(_MLP_WEIGHTS, every)(
            n, freeze=lambda d: LearningRate(d, next(rate))
        )

    return build


def _rated_residual(rates: Sequence[float]) -> Builder:
    """`_residual` with rates (first Dense, residual branch, readout)."""

    def build(n: int) -> list[Layer]:
        first, block, relu, readout = _residual(
            n, freeze=lambda branch: LearningRate(branch, rates[1])
        )
        return [
            LearningRate(first, rates[0]),
            block,
            relu,
            LearningRate(readout, rates[2]),
        ]

    return build


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
    )


_MLP_INPUTS = (8, 16)

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            "mlp-frozen-first",
            "MLP 16-n-n-1, NTK param., first Dense frozen",
            _mlp(_MLP_WEIGHTS, {0}),
            _MLP_INPUTS,
        ),
        Architecture(
            "mlp-frozen-middle",
            "MLP 16-n-n-1, NTK param., middle Dense frozen",
            _mlp(_MLP_WEIGHTS, {1}),
            _MLP_INPUTS,
        ),
        Architecture(
            "mlp-frozen-last",
            "MLP 16-n-n-1, NTK param., readout Dense frozen",
            _mlp(_MLP_WEIGHTS, {2}),
            _MLP_INPUTS,
        ),
        Architecture(
            "mlp-readout-only",
            "MLP 16-n-n-1, NTK param., all but the readout frozen (NTK = NNGP)",
            _mlp(_MLP_WEIGHTS, {0, 1}),
            _MLP_INPUTS,
        ),
        Architecture(
            "mlp-standard-frozen-last",
            "MLP 16-n-n-1, standard param., readout Dense frozen",
            _mlp(_MLP_WEIGHTS, {2}, "standard"),
            _MLP_INPUTS,
        ),
        Architecture(
            "cnn-frozen-conv-block",
            "CNN 4x4x2 images, n/4 channels, frozen Conv+AvgPool block",
            _cnn,
            (4, 4, 4, 2),
            width_divisor=4,
        ),
        Architecture(
            "residual-frozen-branch",
            "Dense then residual block whose Relu-Dense branch is frozen",
            _residual,
            _MLP_INPUTS,
        ),
        _rated(
            "mlp-rates",
            "MLP 16-n-n-1, NTK param., first Dense x0.1, readout x10 (LearningRate)",
            _rated_mlp,
            (0.1, 1.0, 10.0),
            _MLP_INPUTS,
        ),
        _rated(
            "residual-rates",
            "Dense x10, then a residual block whose branch trains x0.1, frozen readout",
            _rated_residual,
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
            raise FileNotFoundError(f"--arch {spec!r}: no file {path}.")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
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
                f"--arch {spec!r}: no module named {module_name!r} ({here}). Pass "
                f"the file instead, --arch {path}:{function_name}, or set "
                f"PYTHONPATH=. to import from the working directory."
            ) from None
    build = getattr(module, function_name, None)
    if not callable(build):
        raise AttributeError(
            f"--arch {spec!r}: {module_name} has no function {function_name!r}."
        )
    doc = (inspect.getdoc(build) or "").split("\n")[0]
    return Architecture(spec, doc or f"user network {spec}", build, input_shape)


@dataclasses.dataclass
class Comparison:
    """The sweep's draws scored against one analytic kernel."""

    widths: list[int]
    single_draw_errors: list[list[float]]  # per width, per draw
    mean_errors: list[float]
    standard_errors: list[float]
    scores: list[float]
    slope: float
    slope_se: float
    verdict: str  # "PASS" or "FAIL"
    reasons: list[str]

    @property
    def rms_errors(self) -> list[float]:
        return [float(np.sqrt(np.mean(np.square(e)))) for e in self.single_draw_errors]

    def to_json(self) -> dict[str, Any]:
        per_width = []
        for i, width in enumerate(self.widths):
            errors = np.asarray(self.single_draw_errors[i])
            per_width.append(
                {
                    "width": width,
                    "single_draw_errors": errors.tolist(),
                    "single_draw_median": float(np.median(errors)),
                    "single_draw_q25": float(np.quantile(errors, 0.25)),
                    "single_draw_q75": float(np.quantile(errors, 0.75)),
                    "single_draw_rms": self.rms_errors[i],
                    "mean_error": self.mean_errors[i],
                    "standard_error": self.standard_errors[i],
                    "score": self.scores[i],
                }
            )
        return {
            "per_width": per_width,
            "slope": self.slope,
            "slope_se": self.slope_se,
            "verdict": self.verdict,
            "reasons": self.reasons,
        }


@dataclasses.dataclass
class ArchitectureResult:
    name: str
    description: str
    frozen: Comparison
    controls: dict[str, Comparison | str]  # a string: why it was not scored
    seconds: float

    @property
    def ok(self) -> bool:
        """The frozen kernel passes and every scored control fails."""
        controls_fail = all(
            c.verdict == "FAIL"
            for c in self.controls.values()
            if isinstance(c, Comparison)
        )
        return self.frozen.verdict == "PASS" and controls_fail

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "frozen": self.frozen.to_json(),
            "controls": {
                k: v.to_json() if isinstance(v, Comparison) else {"skipped": v}
                for k, v in self.controls.items()
            },
            "ok": self.ok,
            "seconds": self.seconds,
        }


def log_log_slope(widths: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of `log(errors)` against `log(widths)` (NaN if an
    error is zero: no slope is defined, and `compare` FAILs on it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(errors)
    if not np.isfinite(logs).all():
        return float("nan")
    return float(np.polyfit(np.log(widths), logs, 1)[0])


def _bootstrap_slope_se(widths, errors_per_width, rng) -> float:
    """Standard error of the RMS-error slope, resampling draws at each width."""
    slopes = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        rms = [
            np.sqrt(np.mean(np.square(rng.choice(e, size=len(e)))))
            for e in errors_per_width
        ]
        slopes.append(log_log_slope(widths, rms))
    # The bootstrap's plug-in variance is low by (S-1)/S for S draws.
    n_draws = min(len(e) for e in errors_per_width)
    return float(np.std(slopes, ddof=1) * np.sqrt(n_draws / (n_draws - 1)))


def compare(
    widths: Sequence[int],
    draws: Sequence[np.ndarray],
    analytic: Sequence[np.ndarray],
    seed: int = 0,
) -> Comparison:
    """Score empirical `draws[i]` (shape `(S, ...)`) against `analytic[i]`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> k = np.eye(4) + 0.5
      >>> widths = [256, 1024, 4096]
      >>> draws = [k + rng.normal(size=(8, 4, 4)) / np.sqrt(n) for n in widths]
      >>> compare(widths, draws, [k] * 3).verdict
      'PASS'
      >>> compare(widths, draws, [1.1 * k] * 3).verdict
      'FAIL'
    """
    if len(widths) < 2:
        raise ValueError("the sweep needs at least 2 widths to fit a slope.")
    undefined = _undefined_reason(widths, draws, analytic)
    if undefined is not None:  # no statistic is defined: FAIL, and say why
        nan = float("nan")
        return Comparison(
            widths=list(widths),
            single_draw_errors=[[nan] * len(ds) for ds in draws],
            mean_errors=[nan] * len(widths),
            standard_errors=[nan] * len(widths),
            scores=[nan] * len(widths),
            slope=nan,
            slope_se=nan,
            verdict="FAIL",
            reasons=[undefined],
        )
    errors = [
        np.array([relative_frobenius_error(d, a) for d in ds])
        for ds, a in zip(draws, analytic)
    ]
    stats = [agreement(ds, a, n) for ds, a, n in zip(draws, analytic, widths)]
    rms = [np.sqrt(np.mean(np.square(e))) for e in errors]
    slope = log_log_slope(widths, rms)
    slope_se = _bootstrap_slope_se(widths, errors, np.random.default_rng(seed))
    tolerance = max(SLOPE_SIGMAS * slope_se, MIN_SLOPE_TOLERANCE)
    reasons = []
    if abs(slope + 0.5) > tolerance:
        reasons.append(
            f"slope {slope:+.2f} is not -1/2 within {tolerance:.2f} "
            f"(max({SLOPE_SIGMAS:g} bootstrap SE, {MIN_SLOPE_TOLERANCE:g}))"
        )
    if not np.isfinite([slope, slope_se, *rms, *(st.score for st in stats)]).all():
        reasons.append("a statistic is NaN or infinite, so nothing was checked")
    if stats[-1].score > MAX_SCORE:
        reasons.append(
            f"score {stats[-1].score:.1f} > {MAX_SCORE:g} at width {widths[-1]}: "
            f"the mean of the draws is off by more than its noise and bias allow"
        )
    return Comparison(
        widths=list(widths),
        single_draw_errors=[e.tolist() for e in errors],
        mean_errors=[s.mean_error for s in stats],
        standard_errors=[s.standard_error for s in stats],
        scores=[s.score for s in stats],
        slope=slope,
        slope_se=slope_se,
        verdict="FAIL" if reasons else "PASS",
        reasons=reasons,
    )


def _undefined_reason(widths, draws, analytic) -> str | None:
    """Why relative errors against `analytic` are undefined, if they are."""
    for width, ds, a in zip(widths, draws, analytic):
        if not np.isfinite(a).all():
            return f"the analytic kernel at width {width} has NaN or inf entries"
        if not np.any(a):
            return (
                f"the analytic kernel at width {width} is zero, so relative "
                f"errors are undefined (is every layer frozen? Then the NTK is 0 "
                f"at any width, and there is nothing to validate)"
            )
        if not np.isfinite(ds).all():
            return f"the empirical draws at width {width} have NaN or inf entries"
    return None


def empirical_draws_fn(
    arch: Architecture, width: int, samples: int, implementation: int | None = None
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`(key, x) -> (samples, *ntk.shape)`: draw `samples` networks, return
    their empirical NTKs.

    The parameters are sampled op by op: each of `init_fn`'s random calls runs
    JAX's kernel compiled once per shape, shared by every width and
    architecture with that shape, whereas compiling the sampling into a jitted
    function costs seconds per width. The NTK is compiled once per width, and
    one draw's parameters are alive at a time (or a few, dispatch being async).
    """
    init_fn, apply_fn, _ = arch.network(width)
    ntk_fn = jax.jit(empirical_ntk_fn(apply_fn, implementation=implementation))

    def draws(key, x):
        keys = jax.random.split(key, samples)
        return jnp.stack([ntk_fn(x, None, init_fn(k, x.shape)[1]) for k in keys])

    return draws


def analytic_ntks_fn(arch: Architecture, width: int) -> Callable:
    """Jitted `x -> {"frozen": ntk, control: ntk, ...}`: one compile per width
    for the frozen kernel and every control (run op by op, each costs seconds)."""
    networks = {"frozen": arch.network(width)}
    if arch.has_controls:
        networks |= {c: arch.control_network(c, width) for c in arch.control_names}
    kernel_fns = {name: network[2] for name, network in networks.items()}
    return jax.jit(lambda x: {n: k(x, None, "ntk") for n, k in kernel_fns.items()})


def width_kernels(
    arch: Architecture,
    width: int,
    samples: int,
    key: jax.Array,
    x: jax.Array,
    implementation: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One width of the sweep: the `samples` empirical NTKs drawn with `key`,
    and the analytic NTKs `{"frozen": ..., control: ...}` (host arrays)."""
    draws = empirical_draws_fn(arch, width, samples, implementation)(key, x)
    analytic = analytic_ntks_fn(arch, width)(x)
    # One host transfer per width, after all draws.
    return np.asarray(draws), {n: np.asarray(k) for n, k in analytic.items()}


def write_json_atomic(path: str | Path, value: Any, **dumps_kwargs) -> Path:
    """Write `value` as JSON to `path` so that `path` is never half-written.

    The text goes to a temporary file in the same folder first, then
    `os.replace` (atomic on POSIX and Windows) puts it in place: a reader sees
    the old file or the whole new one, even if the process is killed.

    Example:
      >>> import json, tempfile
      >>> from pathlib import Path
      >>> path = Path(tempfile.mkdtemp()) / "a.json"
      >>> json.loads(write_json_atomic(path, {"a": 1}).read_text())
      {'a': 1}
    """
    path = Path(path)
    text = json.dumps(value, **dumps_kwargs)
    # A name `*.json` never matches the temporary file, so a leftover one (a
    # kill between write and replace) is never read as finished.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sweep_settings(
    architectures: Sequence[Architecture],
    samples: int,
    seed: int,
    implementation: int | None = None,
) -> dict[str, Any]:
    """What determines a sweep's draws: saved widths resume only under equal
    settings (the widths themselves may differ: each width's draws depend on
    the seed, the architecture's position and the width only)."""

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    [device] = jnp.zeros(()).devices()  # the default device, honouring contexts
    return {
        "architectures": [
            {
                "name": a.name,
                "input_shape": list(a.input_shape),
                "width_divisor": a.width_divisor,
            }
            for a in architectures
        ],
        "samples": samples,
        "seed": seed,
        "implementation": implementation,
        "dtype": "float64" if jax.config.jax_enable_x64 else "float32",
        "device_kind": getattr(device, "device_kind", device.platform),
        "versions": {
            name: version(name)
            for name in ("nt-frozen", "jax", "jaxlib", "neural-tangents", "numpy")
        },
    }


def _width_path(folder: Path, index: int, arch: Architecture, width: int) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", arch.name)
    return folder / f"{index:02d}-{name}-n{width}.json"


def _load_width(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """A saved width's kernels, refusing one saved under other settings."""
    try:
        saved = json.loads(path.read_text())
        saved_settings = saved["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"cannot read the saved width {path} ({e}); delete it to recompute "
            f"that width."
        ) from None
    differ = [
        f"{k} {saved_settings.get(k)!r} (saved) vs {settings[k]!r} (now)"
        for k in settings
        if saved_settings.get(k) != settings[k]
    ]
    if differ:
        raise ValueError(
            f"cannot resume from {path.parent}: its widths were computed with "
            f"other settings ({'; '.join(differ)}). Rerun with the saved "
            f"settings, or write to another folder."
        )
    return saved


def sweep_architecture(
    arch: Architecture,
    widths: Sequence[int],
    samples: int,
    key: jax.Array,
    implementation: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    save: Callable[[int, dict[str, Any]], None] | None = None,
    load: Callable[[int], dict[str, Any] | None] | None = None,
) -> ArchitectureResult:
    """Run the sweep for one architecture; see the module docstring.

    `save(width, kernels)` is called with each finished width's kernels;
    `load(width)` returns a saved width's kernels (or None to compute it).
    """
    start = time.perf_counter()
    x_key, draw_key = jax.random.split(key)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    x = jax.random.normal(x_key, arch.input_shape, dtype)
    layer_widths = [arch.layer_width(w) for w in widths]
    names = ["frozen", *arch.control_names] if arch.has_controls else ["frozen"]
    draws, analytic = [], {"frozen": []} | {c: [] for c in arch.control_names}
    for width in widths:
        saved = None if load is None else load(width)
        if saved is None:
            d, a = width_kernels(
                arch,
                width,
                samples,
                jax.random.fold_in(draw_key, width),
                x,
                implementation,
            )
            if save is not None:
                save(width, {"draws": d, "analytic": a})
        else:
            np_dtype = np.dtype(saved["dtype"])
            d = np.asarray(saved["draws"], np_dtype)
            a = {k: np.asarray(v, np_dtype) for k, v in saved["analytic"].items()}
        draws.append(d)
        for name in names:
            analytic[name].append(a[name])
        if progress is not None:  # called once per finished (architecture, width)
            progress(arch.name, arch.layer_width(width))

    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    frozen = compare(layer_widths, draws, analytic["frozen"], seed)
    controls: dict[str, Comparison | str] = {}
    for name in arch.control_names:
        if not arch.has_controls:
            controls[name] = "the builder takes no `freeze` argument"
        elif all(
            relative_frobenius_error(c, f) < SAME_KERNEL_RTOL
            for c, f in zip(analytic[name], analytic["frozen"])
        ):
            controls[name] = "equals the frozen kernel for this architecture"
        else:
            controls[name] = compare(layer_widths, draws, analytic[name], seed)
    return ArchitectureResult(
        arch.name, arch.description, frozen, controls, time.perf_counter() - start
    )


def run_validation(
    architectures: Iterable[Architecture],
    widths: Sequence[int],
    samples: int = 8,
    seed: int = 0,
    implementation: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> list[ArchitectureResult]:
    """Sweep every architecture over `widths` with `samples` draws per width.

    With a `checkpoint` folder, each finished (architecture, width) is written
    there at once (atomically, with the kernels and the `sweep_settings`), so
    an interrupted sweep loses at most the width in progress. `resume=True`
    reads the widths saved there instead of recomputing them (the draws are
    the same: each width's key is derived from `seed`), and refuses a folder
    saved under other settings; without it, a folder holding saved widths is
    refused rather than overwritten.

    Example:
      >>> from nt_frozen.validate import ARCHITECTURES, run_validation
      >>> [result] = run_validation(
      ...     [ARCHITECTURES["mlp-frozen-middle"]], widths=[128, 512], samples=4)
      >>> result.frozen.verdict, result.controls["unfrozen"].verdict
      ('PASS', 'FAIL')
    """
    if samples < 2:
        raise ValueError(
            f"samples={samples}: must be at least 2 (the noise is estimated)."
        )
    architectures = list(architectures)
    widths = sorted(set(int(w) for w in widths))
    key = jax.random.PRNGKey(seed)
    folder = None if checkpoint is None else Path(checkpoint)
    settings = sweep_settings(architectures, samples, seed, implementation)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        saved = sorted(folder.glob("*.json"))
        if saved and not resume:
            raise ValueError(
                f"checkpoint {folder} holds {len(saved)} saved width(s) of an "
                f"earlier sweep: resume it (resume=True, --resume), or delete the "
                f"folder to start afresh."
            )
        for path in saved:  # refuse mixed settings before any work
            _load_width(path, settings)

    results = []
    for i, arch in enumerate(architectures):
        save = load = None
        if folder is not None:

            def save(width, kernels, i=i, arch=arch):
                a = kernels["analytic"]
                record = {
                    "settings": settings,
                    "architecture": arch.name,
                    "width": width,
                    "dtype": kernels["draws"].dtype.name,
                    "draws": kernels["draws"].tolist(),
                    "analytic": {k: v.tolist() for k, v in a.items()},
                }
                write_json_atomic(_width_path(folder, i, arch, width), record)

            def load(width, i=i, arch=arch):
                path = _width_path(folder, i, arch, width)
                return _load_width(path, settings) if path.exists() else None

        results.append(
            sweep_architecture(
                arch,
                widths,
                samples,
                jax.random.fold_in(key, i),
                implementation,
                progress,
                save,
                load,
            )
        )
    return results
