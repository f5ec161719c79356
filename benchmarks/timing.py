"""Measuring helpers shared by every benchmark row: interleaved timing, peak memory, tables.

Contenders are timed interleaved in one process (A B, B A, A B, ...) so that a
noisy neighbour, thermal drift or a background job slows each of them alike; the
median of the rounds is reported with the interquartile spread as a noise gauge.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch.profiler import ProfilerActivity, profile


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a wall-clock reading covers the work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one contender over the measured rounds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = the middle half lies within 5 %)."""
        if len(self.samples) < 4:
            return (max(self.samples) - min(self.samples)) / self.median
        low, _, high = statistics.quantiles(self.samples, n=4)
        return (high - low) / self.median


def time_interleaved(
    contenders: Mapping[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device
) -> dict[str, Timing]:
    """Time each zero-argument callable once per round, alternating their order every round.

    Args:
        contenders: name -> callable doing one unit of work (one training step, one sampling run).
        rounds: measured rounds; each callable is timed once per round.
        warmup: unmeasured rounds first (allocator caches, oneDNN primitive caches, Adam state).
        device: synchronised before and after every call.

    Returns:
        name -> Timing with ``rounds`` samples (seconds per call).
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        # Reversing the order every round cancels any advantage of going first or second.
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            contenders[name]()
            synchronize(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def peak_memory_bytes(work: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``work()`` runs, above what was allocated before it started.

    CUDA: the caching allocator's own peak counter. CPU: the profiler records every
    allocation and free with a timestamp ("[memory]" events); their running sum,
    in time order, is the live memory, and its maximum is the peak. Allocations made
    before ``work`` (parameters, optimizer state, the batch) are the baseline, not counted.
    """
    synchronize(device)
    if device.type == "cuda":
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = [event for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"]
    events.sort(key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()  # negative for a free
            peak = max(peak, live)
    return peak


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Render rows as an aligned text table.

    Args:
        rows: dicts holding the values.
        columns: (key, header, format spec) per column, e.g. ``("project_ms", "project ms", ".1f")``.
    """
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([format(row[key], spec) if key in row else "-" for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
