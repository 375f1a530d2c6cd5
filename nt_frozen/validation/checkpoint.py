"""The sweep's checkpoints: the settings that decide its draws, one JSON
file per finished width, and the refusal to resume under other settings."""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from nt_frozen.validation.architectures import Architecture


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed (or must not be overwritten);
    its own class so that a caller can tell it from errors of the sweep.

    Example:
      >>> issubclass(CheckpointError, ValueError)
      True
    """


def package_versions() -> dict[str, str | None]:
    """The installed versions that a sweep's numbers depend on."""

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    names = ("nt-frozen", "jax", "jaxlib", "neural-tangents", "numpy")
    return {name: version(name) for name in names}


def sweep_settings(
    architectures: Sequence[Architecture],
    samples: int,
    seed: int,
    implementation: int | None = None,
) -> dict[str, Any]:
    """What determines a sweep's draws: saved widths resume only under equal
    settings (the widths themselves may differ: each width's draws depend on
    the seed, the architecture's position and the width only).

    Example:
      >>> import jax
      >>> from nt_frozen.validation import ARCHITECTURES
      >>> arch = ARCHITECTURES["mlp-frozen-last"]
      >>> x = jax.random.normal(jax.random.PRNGKey(0), (3, *arch.input_shape[1:]))
      >>> settings = sweep_settings([arch], samples=8, seed=0)
      >>> settings["architectures"][0]["name"], settings["samples"], settings["seed"]
      ('mlp-frozen-last', 8, 0)
    """

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
        "dtype": jnp.zeros(()).dtype.name,  # float64 under jax_enable_x64
        # TF32 (GPU) or bfloat16 (TPU) products differ by ~1e-3 relative: a
        # width computed under another precision is another sweep.
        "matmul_precision": jax.config.values["jax_default_matmul_precision"],
        "device_kind": getattr(device, "device_kind", device.platform),
        "versions": package_versions(),
    }


def width_path(folder: Path, index: int, arch: Architecture, width: int) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", arch.name)
    return folder / f"{index:02d}-{name}-n{width}.json"


def load_width(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """A saved width's kernels, refusing one saved under other settings."""
    try:
        saved = json.loads(path.read_text())
        saved_settings = saved["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"cannot read the saved width {path} ({e}); delete it to recompute "
            f"that width."
        ) from None
    differ = [
        f"{k} {saved_settings.get(k)!r} (saved) vs {settings[k]!r} (now)"
        for k in settings
        if saved_settings.get(k) != settings[k]
    ]
    if differ:
        raise CheckpointError(
            f"cannot resume from {path.parent}: its widths were computed with "
            f"other settings ({'; '.join(differ)}). Rerun with the saved "
            f"settings, or write to another folder."
        )
    return saved
