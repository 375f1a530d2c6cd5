"""Figures for the validation sweep: error vs width on log-log axes."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nt_frozen.validate import ArchitectureResult, Comparison

_CONTROL_STYLE = {
    "unfrozen": dict(color="tab:red", linestyle="--", marker="s"),
    "identity_guess": dict(color="tab:orange", linestyle=":", marker="^"),
    # Controls of the architectures with per-layer rates.
    "unrated": dict(color="tab:red", linestyle="--", marker="s"),
    "swapped_rates": dict(color="tab:purple", linestyle=":", marker="v"),
}


def plot_sweep(ax, result: ArchitectureResult) -> None:
    """Draw one architecture's errors vs width on a matplotlib `ax`."""
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
        label="frozen NTK: single draw (median, IQR)",
    )
    ax.plot(
        widths,
        frozen.mean_errors,
        color="tab:blue",
        marker="o",
        markerfacecolor="white",
        linestyle="-",
        alpha=0.6,
        label="frozen NTK: Monte Carlo mean",
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
    """One panel per architecture, saved as a PNG at `path`."""
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
    legend = {}  # one entry per label, over all panels (controls can be skipped)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if spare:  # the legend fills an empty panel, else goes below the panels
        spare[0].legend(handles, labels, loc="center", fontsize=8)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Analytic frozen NTK vs empirical NTK of finite networks")
    fig.tight_layout(rect=(0, 0 if spare else 0.08, 1, 0.97))
    fig.savefig(path, dpi=120)
    return path
