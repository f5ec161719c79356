"""Median and range over several runs of bench.py, as a Markdown table.

    for i in 1 2 3 4 5; do python benchmarks/bench.py --rows step,sample,memory --json run$i.json; done
    python benchmarks/summary.py run*.json

One run's ratio moves with whatever else the machine is doing; the median over runs, with
the lowest and highest run beside it, is what the tables in benchmarks/README.md report.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Sequence

# (row kind, the keys that identify a row across runs, the measured values summarised) per table line.
SUMMARISED = {
    "step": (("device", "precision", "cell_type", "batch"), ("project_ms", "faster_native_ms", "speedup")),
    "sample": (("device", "cell_type", "images"), ("project_captions_per_s", "native_captions_per_s", "speedup")),
    "memory": (("device", "cell_type", "batch"), ("project_mib", "native_mib", "ratio")),
}


def median_and_range(values: Sequence[float]) -> str:
    """``median (lowest–highest)``: two decimals for values below 10 (ratios), one above (ms, captions/s)."""
    digits = 2 if max(values) < 10 else 1
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def summarise(runs: Sequence[dict]) -> list[dict[str, str]]:
    """One line per (kind, identifying keys) present in the runs: the median and range of each measured value.

    Args:
        runs: the JSON documents bench.py writes with --json, each ``{"machine": ..., "rows": [...]}``.
    """
    collected: dict[tuple, dict[str, list[float]]] = {}
    for run in runs:
        for row in run["rows"]:
            if row.get("row") not in SUMMARISED or "speedup" not in row and "ratio" not in row:
                continue
            keys, values = SUMMARISED[row["row"]]
            if row["row"] == "step":
                row = {**row, "faster_native_ms": min(row["native_ms"], row["native_packed_ms"])}
            line = collected.setdefault((row["row"], *(row[key] for key in keys)), {name: [] for name in values})
            for name in values:
                line[name].append(row[name])
    return [
        {"row": " ".join(str(part) for part in identity), "runs": str(len(next(iter(values.values()))))}
        | {name: median_and_range(measured) for name, measured in values.items()}
        for identity, values in collected.items()
    ]


def markdown(lines: Sequence[dict[str, str]]) -> str:
    """The summary lines as Markdown tables, one per row kind (their columns differ)."""
    tables = []
    for kind in SUMMARISED:
        rows = [line for line in lines if line["row"].split()[0] == kind]
        if not rows:
            continue
        columns = list(rows[0])
        header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
        tables.append("\n".join([header] + ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]))
    return "\n\n".join(tables)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the JSON files of the runs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files written by bench.py --json")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Print the machine and the median-and-range tables of the runs named in ``argv``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    machines = {json.dumps({k: v for k, v in run["machine"].items() if k != "load_1min"}) for run in runs}
    if len(machines) > 1:
        parser.error("the runs come from different machines or settings; summarise each machine on its own")
    print(", ".join(f"{key}: {value}" for key, value in json.loads(machines.pop()).items()), f"runs: {len(runs)}\n")
    print(markdown(summarise(runs)))


if __name__ == "__main__":
    main()
