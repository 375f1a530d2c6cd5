"""`nt_frozen.kernel_matrix` vs `nt.batch` at the same block size, side by side.

Symmetric kernels (x2=None): kernel_matrix computes the b(b+1)/2 blocks on and
above the diagonal, nt.batch all b^2. Wall times are interleaved in one process,
repeat by repeat (the first repeat of each method compiles: kernel_matrix keeps
its compiled block programs for later calls with the same kernel_fn, nt.batch's
jit does the same); the table gives medians, every repeat is in the JSON, and
the results are compared entry by entry. Peak memory is each method's maximum
resident set size in a fresh subprocess (same case, one call).

    uv run python benchmarks/kernel_matrix.py --out out/kernel_matrix  # .md, .json
    uv run python benchmarks/kernel_matrix.py --case mlp --n 4096 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def network(case: str):
    """The case's analytic kernel_fn (build it once and reuse it, as a user
    would: kernel_matrix keeps compiled programs per kernel_fn object)."""
    return CASES[case][0]()[2]


def run(method: str, case: str, n: int, block: int, kernel_fn=None):
    kernel_fn = kernel_fn or network(case)
    x = np.asarray(
        jax.random.normal(jax.random.PRNGKey(0), (n, *CASES[case][1])), np.float32
    )
    start = time.perf_counter()
    if method == "ours":
        out = kernel_matrix(kernel_fn, x, None, GET, block_size=block, progress=False)
        out = tuple(np.asarray(v) for v in out)
    else:
        fn = nt.batch(kernel_fn, batch_size=block, store_on_device=False)
        out = tuple(np.asarray(v) for v in fn(x, None, GET))
    return time.perf_counter() - start, out


def peak_rss_mib(method: str, case: str, n: int, block: int) -> float:
    """The subprocess's own peak: VmHWM of its address space (its ru_maxrss
    would start at this process's RSS, inherited through fork and exec)."""
    code = (
        "import sys; sys.argv=['x']; "
        "sys.path.insert(0, 'benchmarks'); import kernel_matrix as b; "
        f"b.run({method!r}, {case!r}, {n}, {block}); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-2]) / 1024  # "VmHWM: <KiB> kB"


def measure(case: str, n: int, block: int, repeats: int, memory: bool) -> dict:
    """Interleaved repeats of both methods on one case, and their peak memory."""
    times: dict[str, list[float]] = {"ours": [], "nt.batch": []}
    kernel_fn = network(case)
    for r in range(repeats):
        t_ours, ours = run("ours", case, n, block, kernel_fn)
        t_batch, theirs = run("nt.batch", case, n, block, kernel_fn)
        times["ours"].append(t_ours)
        times["nt.batch"].append(t_batch)
        print(
            f"{case} N={n} repeat {r}: ours {t_ours:.2f} s, nt.batch {t_batch:.2f} s,"
            f" ratio {t_ours / t_batch:.3f}",
            flush=True,
        )
    row = {
        "case": case,
        "n": n,
        "block": block,
        "ours_s": statistics.median(times["ours"]),
        "nt_batch_s": statistics.median(times["nt.batch"]),
        "ours_s_each": times["ours"],
        "nt_batch_s_each": times["nt.batch"],
        "ratio_each": [a / b for a, b in zip(times["ours"], times["nt.batch"])],
        "max_rel_diff": max(
            float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(ours, theirs)
        ),
    }
    row["ratio"] = row["ours_s"] / row["nt_batch_s"]
    if memory:
        row["ours_peak_mib"] = peak_rss_mib("ours", case, n, block)
        row["nt_batch_peak_mib"] = peak_rss_mib("nt.batch", case, n, block)
    return row


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (median times)."""
    lines = [
        "| case | N | block | kernel_matrix s | nt.batch s | ratio | ratio per "
        "repeat | peak RSS MiB (kernel_matrix / nt.batch) | max rel diff |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        mem = (
            f"{r['ours_peak_mib']:.0f} / {r['nt_batch_peak_mib']:.0f}"
            if "ours_peak_mib" in r
            else "-"
        )
        each = ", ".join(f"{x:.2f}" for x in r["ratio_each"])
        lines.append(
            f"| {r['case']} | {r['n']} | {r['block']} | {r['ours_s']:.2f} | "
            f"{r['nt_batch_s']:.2f} | {r['ratio']:.2f} | {each} | {mem} | "
            f"{r['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--n", type=int, help="inputs (default per case)")
    parser.add_argument("--block", type=int, help="block size (default per case)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--out", type=Path, help="write the table to OUT.md and the rows to OUT.json"
    )
    args = parser.parse_args()
    command = " ".join(["python", *sys.argv])
    print(f"devices: {jax.devices()}; command: {command}", flush=True)
    rows = []
    for case in args.case or list(CASES):
        n = args.n or CASES[case][2]
        block = args.block or CASES[case][3]
        rows.append(measure(case, n, block, args.repeats, not args.no_memory))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print("\n" + text)
    if args.out is not None:
        out = args.out
        if out.suffix in (".md", ".json"):
            out = out.with_suffix("")
        out.parent.mkdir(parents=True, exist_ok=True)
        head = f"`{command}`, {jax.devices()}, {os.cpu_count()} CPU cores\n\n"
        Path(f"{out}.md").write_text(head + text)
        meta = {"command": command, "devices": str(jax.devices()), "rows": rows}
        Path(f"{out}.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
