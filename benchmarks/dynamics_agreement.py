"""Finite-width ensembles with frozen layers vs `nt.predict`: agreement per width.

The setup of tests/dynamics/ (10 train / 6 test points in R^8, MLP
Dense -> Relu -> Dense(W_std=0.5) -> Relu -> Dense(1), three freezing patterns),
trained by full-batch gradient descent at t = 1, 2, 4 (units of N / lambda_max)
and at convergence. Prints one Markdown table: errors relative to the analytic
prediction (see `nt_frozen.dynamics.DynamicsAgreement`), their Monte Carlo
standard errors, and the paired mean error against the *unfrozen* network's
NTK (the wrong kernel, for scale).

    uv run python benchmarks/dynamics_agreement.py --widths 512 2048 8192 --members 32
"""

from __future__ import annotations

import argparse
import math
import time

import jax

from nt_frozen.dynamics import (
    analytic_prediction,
    compare_dynamics,
    dynamics_agreement,
    stiffest_mode_time,
)
from nt_frozen.dynamics.tasks import sphere_regression
from nt_frozen.networks import FREEZING_PATTERNS, three_layer_mlp

TIMES = (1.0, 2.0, 4.0, math.inf)
CASES = FREEZING_PATTERNS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--step-fraction", type=float, default=0.02)
    parser.add_argument(
        "--member-batch-size",
        type=int,
        default=None,
        help="train this many members at once (memory); default all",
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = parser.parse_args()

    x_train, y_train, x_test = sphere_regression()
    y_train = y_train[:, :1]
    _, _, unfrozen_kernel_fn = three_layer_mlp(1)
    print(
        "| case | width | t·λ_max/N | mean err | MC SE | paired err | paired SE "
        "| var err | var SE | member rms | paired err, unfrozen NTK |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        for width in args.widths:
            start = time.perf_counter()
            init_fn, apply_fn, kernel_fn = three_layer_mlp(width, CASES[case])
            unit = stiffest_mode_time(kernel_fn(x_train, None, "ntk"), y_train.size)
            ts = [t * unit for t in TIMES]
            ensemble, _, a = compare_dynamics(
                init_fn,
                apply_fn,
                kernel_fn,
                x_train,
                y_train,
                x_test,
                ts,
                jax.random.PRNGKey(args.seed),
                args.members,
                step_fraction=args.step_fraction,
                member_batch_size=args.member_batch_size,
            )
            wrong = dynamics_agreement(
                ensemble,
                analytic_prediction(unfrozen_kernel_fn, x_train, y_train, x_test, ts),
            )
            for i, t in enumerate(TIMES):
                print(
                    f"| {case} | {width} | {t:g} | {a.mean_error[i]:.3f} "
                    f"| {a.mean_se[i]:.3f} | {a.paired_mean_error[i]:.4f} "
                    f"| {a.paired_mean_se[i]:.4f} | {a.variance_error[i]:.3f} "
                    f"| {a.variance_se:.3f} | {a.residual_rms[i]:.4f} "
                    f"| {wrong.paired_mean_error[i]:.3f} |",
                    flush=True,
                )
            steps = int(ensemble.schedule.n_steps.sum())
            seconds = time.perf_counter() - start
            print(f"<!-- {case}, width {width}: {steps} steps, {seconds:.0f} s -->")


if __name__ == "__main__":
    main()
