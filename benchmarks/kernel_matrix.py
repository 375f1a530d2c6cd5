"""`nt_frozen.kernel_matrix` vs `nt.batch` at the same block size, side by side.

Symmetric kernels (x2=None): kernel_matrix computes the b(b+1)/2 blocks on and
above the diagonal, nt.batch all b^2. Wall times are interleaved in one process
(each call cold: kernel_matrix compiles its block programs on every call,
nt.batch's first call compiles); the results are compared entry by entry.
Peak memory is each method's maximum resident set size in a fresh subprocess
(same case, one call).

    uv run python benchmarks/kernel_matrix.py                 # MLP N=16384, CNN N=512
    uv run python benchmarks/kernel_matrix.py --case mlp --n 4096 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import numpy as np

from nt_frozen import Frozen, kernel_matrix, nt, stax

CASES = {
    # name: (network, input shape after N, default N, block size)
    "mlp": (
        lambda: stax.serial(
            stax.Dense(512),
            stax.Relu(),
            Frozen(stax.Dense(512)),
            stax.Relu(),
            stax.Dense(1),
        ),
        (64,),
        16384,
        512,
    ),
    "cnn-gap": (
        lambda: stax.serial(
            stax.Conv(64, (3, 3), padding="SAME"),
            stax.Relu(),
            Frozen(stax.serial(stax.Conv(64, (3, 3), padding="SAME"), stax.Relu())),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ),
        (8, 8, 3),
        512,
        128,
    ),
}
GET = ("nngp", "ntk")


def run(method: str, case: str, n: int, block: int):
    make, shape, _, _ = CASES[case]
    _, _, kernel_fn = make()
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, *shape)), np.float32)
    start = time.perf_counter()
    if method == "ours":
        out = kernel_matrix(kernel_fn, x, None, GET, block_size=block, progress=False)
        out = tuple(np.asarray(v) for v in out)
    else:
        fn = nt.batch(kernel_fn, batch_size=block, store_on_device=False)
        out = tuple(np.asarray(v) for v in fn(x, None, GET))
    return time.perf_counter() - start, out


def peak_rss_mib(method: str, case: str, n: int, block: int) -> float:
    code = (
        "import sys, resource; sys.argv=['x']; "
        "sys.path.insert(0, 'benchmarks'); import kernel_matrix as b; "
        f"b.run({method!r}, {case!r}, {n}, {block}); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1]) / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--n", type=int, help="inputs (default per case)")
    parser.add_argument("--block", type=int, help="block size (default per case)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}; command: {' '.join(sys.argv)}")
    rows = []
    for case in args.case or list(CASES):
        n = args.n or CASES[case][2]
        block = args.block or CASES[case][3]
        times: dict[str, list[float]] = {"ours": [], "nt.batch": []}
        for _ in range(args.repeats):
            t_ours, ours = run("ours", case, n, block)
            t_batch, theirs = run("nt.batch", case, n, block)
            times["ours"].append(t_ours)
            times["nt.batch"].append(t_batch)
        rel = max(
            float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(ours, theirs)
        )
        row = {
            "case": case,
            "n": n,
            "block": block,
            "ours_s": min(times["ours"]),
            "nt_batch_s": min(times["nt.batch"]),
            "max_rel_diff": rel,
        }
        row["ratio"] = row["ours_s"] / row["nt_batch_s"]
        if not args.no_memory:
            row["ours_peak_mib"] = peak_rss_mib("ours", case, n, block)
            row["nt_batch_peak_mib"] = peak_rss_mib("batch", case, n, block)
        rows.append(row)
        print(json.dumps(row))
    print(
        f"\n{'case':<8} {'N':>6} {'block':>5} {'ours s':>8} {'nt.batch s':>10} "
        f"{'ratio':>6} {'peak MiB ours/batch':>20} {'max rel diff':>12}"
    )
    for r in rows:
        mem = (
            f"{r['ours_peak_mib']:.0f}/{r['nt_batch_peak_mib']:.0f}"
            if "ours_peak_mib" in r
            else "-"
        )
        print(
            f"{r['case']:<8} {r['n']:>6} {r['block']:>5} {r['ours_s']:>8.2f} "
            f"{r['nt_batch_s']:>10.2f} {r['ratio']:>6.2f} {mem:>20} "
            f"{r['max_rel_diff']:>12.1e}"
        )


if __name__ == "__main__":
    main()
