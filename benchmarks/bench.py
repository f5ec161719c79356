"""The project's CaptioningRNN against the same model built from PyTorch's native modules.

    python benchmarks/bench.py                        # every row (its run time: benchmarks/README.md)
    python benchmarks/bench.py --quick --rows step    # a fast smoke run
    python benchmarks/bench.py --json results.json    # also write every number as JSON

Rows (``--rows``, comma-separated; what each measures is in ``rows.py``):

    check   float64, small: both native copies give the project's loss and gradients (to 1e-10)
    step    training step (loss + backward + Adam) ms, RNN/LSTM x batch 25/512, interleaved with
            the native model padded and packed (pack_padded_sequence); the ratio is against the faster
    sample  greedy captions/s for 1,000 images
    memory  peak memory of one training step at batch 512
    flops   achieved GEMM GFLOP/s of the training step next to a plain torch.matmul
    data    CaptionDataModule captions/s at batch 512 next to the training step's captions/s

Every ratio is oriented so that > 1 means the project is better (faster, smaller).
Both models always see the same batch and start from the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `caption_torch` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.chart import plot_ratios  # noqa: E402
from benchmarks.rows import (  # noqa: E402
    Rounds,
    Shapes,
    bench_data_module,
    bench_memory,
    bench_sampling,
    bench_training_step,
    check_equivalence,
    coco_sized_data_dir,
    flops_row,
    make_batch,
    make_pair,
    matmul_gflops,
    profile_training_step,
)
from benchmarks.timing import format_table  # noqa: E402
from caption_torch.functional import CELLS  # noqa: E402

NOISY_SPREAD = 0.25  # interquartile range / median above which a table gets a warning
ROWS = ("check", "step", "sample", "memory", "flops", "data")

# (key, header, format) per printed column; the JSON holds every key of a row.
COLUMNS = {
    "check": [
        ("cell_type", "cell", "s"),
        ("loss_difference", "|loss diff|", ".1e"),
        ("grad_difference", "max |grad diff|", ".1e"),
        ("ok", "<= 1e-10", ""),
    ],
    "step": [
        ("device", "device", "s"),
        ("precision", "precision", "s"),
        ("cell_type", "cell", "s"),
        ("batch", "batch", "d"),
        ("masked_fraction", "masked", ".0%"),
        ("project_ms", "project ms", ".1f"),
        ("project_spread", "±", ".0%"),
        ("native_ms", "native ms", ".1f"),
        ("native_spread", "±", ".0%"),
        ("native_packed_ms", "packed ms", ".1f"),
        ("native_packed_spread", "±", ".0%"),
        ("best_native", "faster native", "s"),
        ("speedup", "native/project", ".2f"),
    ],
    "sample": [
        ("device", "device", "s"),
        ("cell_type", "cell", "s"),
        ("images", "images", "d"),
        ("max_length", "max_length", "d"),
        ("project_captions_per_s", "project cap/s", ".0f"),
        ("project_spread", "±", ".0%"),
        ("native_captions_per_s", "native cap/s", ".0f"),
        ("native_spread", "±", ".0%"),
        ("speedup", "project/native", ".2f"),
        ("same_captions", "same captions", ".0%"),
    ],
    "memory": [
        ("device", "device", "s"),
        ("cell_type", "cell", "s"),
        ("batch", "batch", "d"),
        ("project_mib", "project MiB", ".1f"),
        ("native_mib", "native MiB", ".1f"),
        ("ratio", "native/project", ".2f"),
    ],
    "flops": [
        ("device", "device", "s"),
        ("cell_type", "cell", "s"),
        ("batch", "batch", "d"),
        ("useful_gflop", "GFLOP/step", ".1f"),
        ("project_gflops", "project GFLOP/s", ".1f"),
        ("native_gflops", "native GFLOP/s", ".1f"),
        ("project_executed_gflops", "project exec GFLOP/s", ".1f"),
        ("native_executed_gflops", "native exec GFLOP/s", ".1f"),
        ("matmul_gflops", "matmul GFLOP/s", ".1f"),
        ("onednn_gflops", "oneDNN GFLOP/s", ".1f"),
        ("project_fraction", "project/matmul", ".0%"),
        ("native_fraction", "native/matmul", ".0%"),
    ],
    "data": [
        ("num_workers", "workers", "d"),
        ("batch", "batch", "d"),
        ("startup_s", "first batch s", ".2f"),
        ("captions_per_s", "delivered cap/s", ".0f"),
        ("train_captions_per_s", "trained cap/s", ".0f"),
        ("ratio", "delivered/trained", ".1f"),
    ],
}

TITLES = {
    "check": "Same model? float64, N=6, weights copied (gates reordered, b -> bias_ih, bias_hh = 0), padded and packed",
    "step": "Training step (loss + backward + Adam), median of interleaved rounds; ± = interquartile spread\n"
    "native: padded nn.RNN/nn.LSTM; packed: the same on pack_padded_sequence; ratio: the faster native / project",
    "sample": "Greedy sampling under no_grad, captions/s",
    "memory": "Peak memory allocated during one training step, above params + Adam state + batch",
    "flops": "Achieved GEMM throughput: useful FLOPs (the per-position GEMMs over unmasked tokens only) / step time",
    "data": "CaptionDataModule delivery rate vs the fastest batch-512 training step (target >= 10x)",
}


def machine_info(devices: Sequence[torch.device]) -> dict:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    with contextlib.suppress(OSError):  # other jobs on the machine make the timings noisy; say so
        info["load_1min"] = round(os.getloadavg()[0], 2)
    if any(device.type == "cuda" for device in devices):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_rows(kind: str, rows: list[dict]) -> None:
    print(f"\n## {TITLES[kind]}")
    skipped = [row for row in rows if "skipped" in row]
    for row in skipped:
        print(f"skipped: {row['skipped']}")
    measured = [row for row in rows if "skipped" not in row]
    if measured:
        print(format_table(measured, COLUMNS[kind]))
    for row in measured:
        for name, error in row.get("errors", {}).items():
            print(f"  {row['cell_type']} {row['precision']}: {name} failed: {error}")
    contenders = ("project", "native", "native_packed")
    if any(row.get(f"{name}_spread", 0) > NOISY_SPREAD for row in measured for name in contenders):
        print(
            f"  noisy: some spreads exceed {NOISY_SPREAD:.0%}; other jobs are competing for the cores. "
            "Rerun on a quiet machine, with more --rounds, or with --threads 1."
        )
    sys.stdout.flush()


def run_data_rows(args: argparse.Namespace, train_captions_per_s: float) -> list[dict]:
    try:
        import caption_torch.data.datamodule  # noqa: F401
        import caption_torch.data.synthetic.generate  # noqa: F401
    except ImportError as error:
        return [{"row": "data", "skipped": f"data module not available ({type(error).__name__}: {error})"}]
    batches = 10 if args.quick else 50
    try:
        data_dir = coco_sized_data_dir(args.data_dir)
        return [bench_data_module(data_dir, workers, 512, batches, train_captions_per_s) for workers in (0, 2)]
    except Exception as error:  # the data code is young: report it and keep the other rows' results
        return [{"row": "data", "skipped": f"failed with {type(error).__name__}: {error}"}]


def run(args: argparse.Namespace, shapes: Shapes = Shapes()) -> dict:
    """Measure the rows asked for in ``args``, print them, and return every result (also JSON-written)."""
    rows_wanted = [row for row in args.rows.split(",") if row]
    unknown = set(rows_wanted) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    main_device = torch.device("cuda" if args.device == "cuda" else "cpu")
    # auto: every row on the CPU, plus the training-step rows on the GPU when there is one.
    extra_step_device = torch.device("cuda") if args.device == "auto" and cuda else None
    devices = [main_device] + ([extra_step_device] if extra_step_device else [])
    rounds = Rounds(rounds=args.rounds or (3 if args.quick else 7), warmup=1 if args.quick else 2)
    results: dict = {"machine": machine_info(devices), "rounds": asdict(rounds), "shapes": asdict(shapes), "rows": []}
    print("# caption-torch benchmark: project (autograd.Function) vs native (nn.Embedding/Linear/RNN/LSTM)")
    machine = results["machine"]
    print(", ".join(f"{key}: {value}" for key, value in machine.items()))
    if machine.get("load_1min", 0) > (machine["cores"] or 1) + 0.5:
        print(
            f"warning: load average {machine['load_1min']} on {machine['cores']} cores: other jobs are running, "
            "so absolute times are inflated (interleaving keeps the ratios fair)"
        )
        if torch.get_num_threads() > 1:
            # A spinning OpenMP thread that loses its core to another job stalls every parallel region.
            print(
                "warning: with more than one thread on a busy machine every parallel region can stall; "
                "prefer --threads 1 here"
            )
    print(f"shapes: {asdict(shapes)}; rounds: {asdict(rounds)}")

    def emit(kind: str, rows: list[dict]) -> list[dict]:
        results["rows"].extend(rows)
        print_rows(kind, rows)
        return rows

    if "check" in rows_wanted:
        emit("check", [check_equivalence(cell, main_device) for cell in CELLS])

    step_rows: list[dict] = []
    if {"step", "flops", "data"} & set(rows_wanted):  # flops and data divide by the measured step
        for device in devices:
            precisions = ("fp32", "bf16-mixed") if device.type == "cuda" else ("fp32",)
            step_rows += emit(
                "step",
                [
                    bench_training_step(cell, batch, shapes, device, rounds, precision)
                    for precision in precisions
                    for cell in CELLS
                    for batch in (25, 512)
                ],
            )

    if "sample" in rows_wanted:
        emit(
            "sample",
            [bench_sampling(cell, 1000, args.max_length, shapes, main_device, rounds) for cell in CELLS],
        )

    if "memory" in rows_wanted:
        emit("memory", [bench_memory(cell, 512, shapes, main_device) for cell in CELLS])

    fp32_steps = [row for row in step_rows if row["precision"] == "fp32"]
    if "flops" in rows_wanted:
        for device in devices:
            reference = matmul_gflops(device, rounds)
            emit("flops", [flops_row(row, shapes, reference) for row in fp32_steps if row["device"] == device.type])

    if "data" in rows_wanted:
        batch_512 = [
            row["project_captions_per_s"]
            for row in fp32_steps
            if row["batch"] == 512 and row["device"] == main_device.type
        ]
        emit("data", run_data_rows(args, max(batch_512)))

    if args.profile:
        results["profiles"] = {}
        features, captions = make_batch(512, shapes, main_device)
        for cell in CELLS:
            for name, model in zip(("project", "native"), make_pair(cell, shapes, main_device)):
                table = profile_training_step(model, features, captions)
                results["profiles"][f"{name}_{cell}"] = table
                print(f"\n## Profile: {name} {cell} training step, batch 512 (2 steps)\n{table}")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")
    if args.plot:
        title = f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads, torch {machine['torch']}"
        print(f"wrote {plot_ratios(results['rows'], args.plot, title)}")
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds after 1 warm-up (default 7 after 2); 10 data batches (default 50)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds per timing (overrides --quick)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: every row on the CPU, plus the step rows (fp32 and bf16-mixed) on CUDA if present",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--max-length", type=int, default=30, help="words generated per image in the sample row")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="cs231n-layout folder for the data row; a COCO-sized synthetic dataset is written there "
        "if it is missing or empty (default: the cached one from ensure_synthetic_dataset)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler tables of both models' batch-512 training steps",
    )
    parser.add_argument("--json", default=None, help="write every row as JSON to this path")
    parser.add_argument("--plot", default=None, help="draw the step, sample and memory ratios as a PNG at this path")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
