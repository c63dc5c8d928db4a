"""Before/after of ``bench_analysis_cost.py --default-only``: processes of a baseline tree and of this tree,
alternating (base, new, base, new, ...), each timing plain vs the default run interleaved; then one summary.

The baseline tree is an export of the revision before the change, with this tree's benchmark script copied in
when the comparison should time the same batches (leave the base's own script where the batching changed: each
side's ``plain`` row is then a forward of its own worker's batches)::

    mkdir /tmp/base && git archive c79b9d3 | tar -x -C /tmp/base
    cp benchmarks/bench_analysis_cost.py /tmp/base/benchmarks/
    OMP_NUM_THREADS=2 python benchmarks/bench_analysis_cost_ab.py --base /tmp/base --pairs 2 --out results.json

``--collect DIR`` only summarises the per-process JSON files already in DIR (``ab_t{threads}_{base,new}_{i}.json``).
Each side's ratio is against its own plain forward, measured in the same process at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(tree: Path, out: Path, repeats: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, "benchmarks/bench_analysis_cost.py", "--default-only", "--repeats", str(repeats),
                    "--out", str(out)], cwd=tree, env=env, check=True)


def summary(files: dict[str, list[Path]]) -> dict:
    out: dict = {"sides": {}}
    for side, paths in files.items():
        reports = [json.loads(p.read_text()) for p in paths]
        rows = [r["rows"][0] for r in reports]
        pairs = [d / p for row in rows for d, p in zip(row["default"]["seconds"], row["plain"]["seconds"])]
        out["sides"][side] = {
            "processes": len(rows),
            "ratio_min_per_process": [row["ratio_min"] for row in rows],
            "ratio_median_per_process": [row["ratio_median"] for row in rows],
            "ratio_median_of_all_pairs": statistics.median(pairs),
            "cpu_ratio_min_per_process": [row["cpu_ratio_min"] for row in rows],
            "seconds_per_process": [{name: row[name]["seconds"] for name in ("plain", "default")} for row in rows],
            "plain_seconds_min": min(row["plain"]["seconds_min"] for row in rows),
            "default_seconds_min": min(row["default"]["seconds_min"] for row in rows),
            # a plain forward of the prompts in input order, where the side's benchmark times it (since the worker
            # batches by length; before, its plain row was that)
            "plain_input_order_seconds_min": min((row["plain_input_order"]["seconds_min"] for row in rows
                                                  if "plain_input_order" in row), default=None),
            "widths": rows[0].get("widths"),
            "max_abs_diff_to_reference": {k: max(row["max_abs_diff_to_reference"][k] for row in rows)
                                          for k in rows[0]["max_abs_diff_to_reference"]},
            "omp_num_threads": reports[0].get("omp_num_threads"),
            "load_average_before_after": [[r["load_average_before"], r["load_average_after"]] for r in reports],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, help="the baseline tree (see the docstring)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--collect", type=Path, help="only summarise the files in this folder")
    ap.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", ""))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    folder = args.collect or args.out.parent
    name = f"ab_t{args.threads}_{{side}}_{{i}}.json"
    if not args.collect:
        for i in range(1, args.pairs + 1):
            for side, tree in (("base", args.base), ("new", ROOT)):
                run(tree, (folder / name.format(side=side, i=i)).resolve(), args.repeats)
    files = {side: sorted(folder.glob(name.format(side=side, i="*"))) for side in ("base", "new")}
    report = summary(files)
    report["threads"] = args.threads
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({s: {k: v for k, v in d.items() if "ratio" in k} for s, d in report["sides"].items()}))


if __name__ == "__main__":
    main()
