"""The sweep's report: the table, the strict JSON and the figure."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nt_frozen.validation.statistics import (
    MAX_SCORE,
    MIN_SLOPE_TOLERANCE,
    SLOPE_SIGMAS,
    ArchitectureResult,
    Comparison,
)


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None.

    Example:
      >>> finite_or_null({"slope": float("nan"), "errors": [0.1, float("inf")]})
      {'slope': None, 'errors': [0.1, None]}
    """
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# What the table's numbers are (printed above it).
TABLE_LEGEND = (
    "What the numbers are: relative Frobenius errors ||K_emp - K||_F / ||K||_F",
    "of empirical NTKs against the analytic NTK K, for each drawn network",
    "(single draw) and for the mean over the draws (MC mean; MC SE: its",
    "standard error). score = ||mean - K||_F / sqrt(SE^2 + bias^2), O(1) for",
    f"the right kernel. The analytic NTK PASSes with score <= {MAX_SCORE:g} at the",
    "largest width and a log-log slope of the RMS single-draw error within",
    f"max({SLOPE_SIGMAS:g} SE, {MIN_SLOPE_TOLERANCE:g}) of the expected -0.50 "
    "(error ~ width^-1/2);",
    "each control (a wrong kernel) must FAIL.",
)


def _quantiles(errors):
    return np.quantile(np.asarray(errors), [0.25, 0.5, 0.75])


def format_table(results: Sequence[ArchitectureResult]) -> str:
    """The sweep's results as the text table the command line prints.

    Example:
      >>> from nt_frozen.validation.synthetic import synthetic_sweep_result
      >>> result = synthetic_sweep_result()
      >>> from nt_frozen.validation import format_table
      >>> format_table([result]).splitlines()[-1].split()[:2]
      ['PASS', 'toy']
    """

    lines = list(TABLE_LEGEND)
    for r in results:
        f = r.frozen
        label = r.width_label
        lines += [
            "",
            f"{r.name}: {r.description}",
            f"  {label:>8}  {'single draw: median [q25, q75]':<31}"
            f"{'MC mean':>8}  {'MC SE':>6}  {'score':>5}",
        ]
        for i, n in enumerate(f.widths):
            e = f.single_draw_errors[i]
            q25, med, q75 = (float(v) for v in _quantiles(e))
            lines.append(
                f"  {n:>8}  {med:.4f} [{q25:.4f}, {q75:.4f}]{'':<8}"
                f"{f.mean_errors[i]:>8.4f}  {f.standard_errors[i]:>6.4f}"
                f"  {f.scores[i]:>5.1f}"
            )
        rows = [("analytic NTK", f, "PASS")] + [
            (f"{name.replace('_', ' ')} (control)", c, "FAIL")
            for name, c in r.controls.items()
        ]
        for row, c, expected in rows:
            if isinstance(c, Comparison):
                ok = "" if c.verdict == expected else f"  <- expected {expected}"
                lines.append(
                    f"  {row:<26} slope {c.slope:+.2f} ± {c.slope_se:.2f}   "
                    f"score {c.scores[-1]:6.1f} at {label} {c.widths[-1]}   "
                    f"{c.verdict}{ok}"
                )
            else:
                lines.append(f"  {row:<26} not scored: {c}")
    lines.append("")
    for r in results:
        controls = [
            f"{name} {c.verdict}"
            for name, c in r.controls.items()
            if isinstance(c, Comparison)
        ]
        lines.append(
            f"{'PASS' if r.ok else 'FAIL'}  {r.name}  (analytic NTK {r.frozen.verdict}"
            + (f"; controls: {', '.join(controls)}" if controls else "")
            + ")"
        )
        lines += [f"      analytic NTK: {reason}" for reason in r.frozen.reasons]
        lines += [
            f"      {name} control not rejected: the sweep cannot tell it from the "
            f"analytic NTK yet; add larger --widths or more --samples"
            for name, c in r.controls.items()
            if isinstance(c, Comparison) and c.verdict == "PASS"
        ]
    return "\n".join(lines)


_CONTROL_STYLE = {
    "unfrozen": dict(color="tab:red", linestyle="--", marker="s"),
    "identity_guess": dict(color="tab:orange", linestyle=":", marker="^"),
    # Controls of the architectures with per-layer rates.
    "unrated": dict(color="tab:red", linestyle="--", marker="s"),
    "swapped_rates": dict(color="tab:purple", linestyle=":", marker="v"),
}


def plot_sweep(ax, result: ArchitectureResult) -> None:
    """Draw one architecture's errors vs width on a matplotlib `ax`.

    Example:
      >>> from nt_frozen.validation.synthetic import synthetic_sweep_result
      >>> result = synthetic_sweep_result()
      >>> import matplotlib
      >>> matplotlib.use("Agg")
      >>> import matplotlib.pyplot as plt
      >>> from nt_frozen.validation import plot_sweep
      >>> fig, ax = plt.subplots()
      >>> plot_sweep(ax, result)
      >>> ax.get_xscale(), ax.get_yscale()
      ('log', 'log')
    """
    frozen = result.frozen
    rms = np.asarray(frozen.rms_errors)
    if not (np.isfinite(rms).all() and (rms > 0).all()):  # nothing to put on log axes
        ax.set_title(f"{result.name}: {frozen.verdict}", fontsize=9)
        ax.text(
            0.5,
            0.5,
            textwrap.fill("; ".join(frozen.reasons) or "no finite errors", 40),
            ha="center",
            va="center",
            fontsize=8,
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return
    widths = np.asarray(frozen.widths)
    errors = [np.asarray(e) for e in frozen.single_draw_errors]
    median = np.array([np.median(e) for e in errors])
    spread = np.array(
        [
            median - [np.quantile(e, 0.25) for e in errors],
            [np.quantile(e, 0.75) for e in errors] - median,
        ]
    )
    ax.errorbar(
        widths,
        median,
        yerr=spread,
        color="tab:blue",
        marker="o",
        capsize=3,
        label="analytic NTK: single draw (median, IQR)",
    )
    ax.plot(
        widths,
        frozen.mean_errors,
        color="tab:blue",
        marker="o",
        markerfacecolor="white",
        linestyle="-",
        alpha=0.6,
        label="analytic NTK: Monte Carlo mean",
    )
    for name, control in result.controls.items():
        if isinstance(control, Comparison):
            ax.plot(
                widths,
                control.rms_errors,
                alpha=0.8,
                label=f"{name.replace('_', ' ')} (control): single draw RMS",
                **_CONTROL_STYLE.get(name, {}),
            )
    # n^{-1/2} through the geometric mean of the frozen RMS errors.
    anchor = np.exp(np.mean(np.log(rms) + 0.5 * np.log(widths)))
    ax.plot(
        widths,
        anchor / np.sqrt(widths),
        color="black",
        linestyle="-.",
        linewidth=1,
        label=r"$\propto n^{-1/2}$",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width n")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title(
        f"{result.name}: {frozen.verdict}\n"
        f"slope {frozen.slope:+.2f} ± {frozen.slope_se:.2f}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)


def save_sweep_figure(results: Sequence[ArchitectureResult], path: Path) -> Path:
    """One panel per architecture, saved as a PNG at `path`.

    Example:
      >>> from nt_frozen.validation.synthetic import synthetic_sweep_result
      >>> result = synthetic_sweep_result()
      >>> import tempfile, pathlib
      >>> from nt_frozen.validation import save_sweep_figure
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> save_sweep_figure([result], folder / "sweep.png").stat().st_size > 0
      True
    """
    # A bare Figure (no pyplot) leaves the caller's backend alone, e.g. in Jupyter.
    from matplotlib.figure import Figure

    columns = min(3, len(results))
    rows = math.ceil(len(results) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.8 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, result in zip(axes.flat, results):
        plot_sweep(ax, result)
    spare = list(axes.flat)[len(results) :]
    for ax in spare:
        ax.set_axis_off()
    # One entry per label, over all panels (controls can be skipped).
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if spare:  # the legend fills an empty panel, else goes below the panels
        spare[0].legend(handles, labels, loc="center", fontsize=8)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(
        "Analytic NTK (frozen or rated layers) vs empirical NTKs of finite networks"
    )
    fig.tight_layout(rect=(0, 0 if spare else 0.08, 1, 0.97))
    fig.savefig(path, dpi=120)
    return path
