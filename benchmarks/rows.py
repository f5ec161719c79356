"""What each benchmark row measures: inputs, the two contenders, and one function per row.

Each ``bench_*`` / ``*_row`` function returns one result row as a flat dict (``"row"``
names its kind); ``bench.py`` decides which to run and prints them. Every ratio is
oriented so that > 1 means the project is better (faster, smaller).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from benchmarks.native import NativeCaptioningRNN, max_loss_difference
from benchmarks.timing import peak_memory_bytes, time_interleaved
from caption_torch.functional import CELLS
from caption_torch.models.recurrent import CaptioningRNN

NULL_ID, START_ID, END_ID, FIRST_WORD_ID = 0, 1, 2, 4  # cs231n's COCO vocabulary: <NULL> <START> <END> <UNK> ...

# Words per caption, roughly COCO's histogram (annotators were asked for >= 8 words; cs231n
# keeps <= 15): mean ~10.7 words, so ~27 % of the 16 predicted positions are <NULL> padding.
COCO_WORD_COUNTS = {8: 0.08, 9: 0.22, 10: 0.25, 11: 0.17, 12: 0.11, 13: 0.08, 14: 0.05, 15: 0.04}


@dataclass(frozen=True)
class Shapes:
    """Model and caption sizes; the defaults are cs231n's COCO setup."""

    input_dim: int = 512  # D: fc7 features after PCA
    wordvec_dim: int = 256  # W
    hidden_dim: int = 512  # H
    vocab_size: int = 1004  # V
    time_steps: int = 16  # T predicted tokens; captions hold T + 1 = 17


@dataclass(frozen=True)
class Rounds:
    """How many interleaved rounds each timing takes."""

    rounds: int = 7
    warmup: int = 2


# --------------------------------------------------------------------------- #
# Inputs and contenders
# --------------------------------------------------------------------------- #


def coco_vocab(vocab_size: int) -> dict[str, int]:
    words = {"<NULL>": NULL_ID, "<START>": START_ID, "<END>": END_ID, "<UNK>": 3}
    return {**words, **{f"word{i}": i for i in range(FIRST_WORD_ID, vocab_size)}}


def coco_like_captions(batch: int, shapes: Shapes, generator: torch.Generator) -> Tensor:
    """(batch, T + 1) ids ``<START> w_1 ... w_L <END> <NULL> ...`` with L drawn like COCO's lengths."""
    T, V = shapes.time_steps, shapes.vocab_size
    counts = torch.tensor(list(COCO_WORD_COUNTS), dtype=torch.long)
    probs = torch.tensor(list(COCO_WORD_COUNTS.values()))
    lengths = counts[torch.multinomial(probs, batch, replacement=True, generator=generator)]
    lengths = lengths.clamp(1, T - 1)  # tiny test shapes have room for fewer words
    words = torch.randint(FIRST_WORD_ID, V, (batch, T + 1), generator=generator)
    positions = torch.arange(T + 1)
    captions = torch.where(positions <= lengths[:, None], words, NULL_ID)  # (batch, T + 1)
    captions[:, 0] = START_ID
    captions[torch.arange(batch), lengths + 1] = END_ID
    return captions


def make_batch(batch: int, shapes: Shapes, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random (batch, D) float32 features and COCO-like captions, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, shapes.input_dim, generator=generator)
    return features.to(device), coco_like_captions(batch, shapes, generator).to(device)


def make_pair(
    cell_type: str, shapes: Shapes, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[CaptioningRNN, NativeCaptioningRNN]:
    """The project's model and its native copy, holding the same weights."""
    torch.manual_seed(seed)
    project = CaptioningRNN(
        coco_vocab(shapes.vocab_size),
        shapes.input_dim,
        shapes.wordvec_dim,
        shapes.hidden_dim,
        cell_type=cell_type,
        dtype=dtype,
    ).to(device)
    return project, NativeCaptioningRNN.from_project(project)


def training_step(model: nn.Module, features: Tensor, captions: Tensor, precision: str = "fp32") -> Callable[[], None]:
    """One optimisation step as a closure: zero_grad(set_to_none), loss, backward, Adam.

    Both models get the same optimizer: fused Adam (one kernel for all parameters, as
    CaptioningSystem uses). The foreach default is slower (``micro.py --groups adam``) and
    costs both models the same, which would only blur the ratio.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        # bf16-mixed: the forward under autocast, backward and the fp32 master weights outside.
        with torch.autocast(features.device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = model.loss(features, captions)
        loss.backward()
        optimizer.step()

    return step


def _run_once(contenders: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Call each contender once; name -> error message for those that raise (they are then left out)."""
    failures = {}
    for name, work in contenders.items():
        try:
            work()
        except Exception as error:  # reported in the row, e.g. a Function that rejects autocast's dtypes
            failures[name] = f"{type(error).__name__}: {error}"
    return failures


# --------------------------------------------------------------------------- #
# Rows
# --------------------------------------------------------------------------- #


def check_equivalence(cell_type: str, device: torch.device) -> dict:
    """float64, small sizes, every weight non-zero: |loss_project - loss_native| and the largest grad gap."""
    shapes = Shapes(input_dim=12, wordvec_dim=8, hidden_dim=10, vocab_size=30, time_steps=16)
    project, _ = make_pair(cell_type, shapes, device, dtype=torch.float64, seed=1)
    with torch.no_grad():  # zero biases would hide a wrong bias mapping
        for param in project.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    features, captions = make_batch(6, shapes, device, seed=1)
    gaps = [max_loss_difference(project, features.double(), captions, packed) for packed in (False, True)]
    loss_gap, grad_gap = (max(column) for column in zip(*gaps))  # the padded and the packed native model
    return {
        "row": "check",
        "cell_type": cell_type,
        "loss_difference": loss_gap,
        "grad_difference": grad_gap,
        "ok": loss_gap <= 1e-10 and grad_gap <= 1e-10,
    }


def bench_training_step(
    cell_type: str, batch: int, shapes: Shapes, device: torch.device, rounds: Rounds, precision: str = "fp32"
) -> dict:
    """ms per training step of project, native and native packed, interleaved.

    speedup = the faster native model's ms / project ms.
    """
    project, native = make_pair(cell_type, shapes, device)
    native_packed = NativeCaptioningRNN.from_project(project, packed=True)
    features, captions = make_batch(batch, shapes, device)
    contenders = {
        "project": training_step(project, features, captions, precision),
        "native": training_step(native, features, captions, precision),
        "native_packed": training_step(native_packed, features, captions, precision),
    }
    failures = _run_once(contenders)
    timings = time_interleaved(
        {name: work for name, work in contenders.items() if name not in failures},
        rounds.rounds,
        rounds.warmup,
        device,
    )
    scored = int((captions[:, 1:] != NULL_ID).sum())
    row = {
        "row": "step",
        "device": device.type,
        "precision": precision,
        "cell_type": cell_type,
        "batch": batch,
        "scored_tokens": scored,
        "distinct_input_words": int(captions[:, :-1].unique().numel()),  # rows of the project's input table
        "masked_fraction": 1 - scored / captions[:, 1:].numel(),
    }
    for name, timing in timings.items():
        row[f"{name}_ms"] = timing.median * 1e3
        row[f"{name}_spread"] = timing.spread
        row[f"{name}_captions_per_s"] = batch / timing.median
    if not failures:
        row["best_native"] = "packed" if row["native_packed_ms"] < row["native_ms"] else "padded"
        row["speedup"] = min(row["native_ms"], row["native_packed_ms"]) / row["project_ms"]
    else:
        row["errors"] = failures
    return row


def bench_sampling(
    cell_type: str, images: int, max_length: int, shapes: Shapes, device: torch.device, rounds: Rounds
) -> dict:
    """Greedy captions/s of ``project.sample`` and the native module stepped one word at a time."""
    project, native = make_pair(cell_type, shapes, device)
    features, _ = make_batch(images, shapes, device)
    project_captions = project.sample(features, max_length)
    native_captions = native.sample(features, max_length)
    contenders = {
        "project": lambda: project.sample(features, max_length),
        "native": lambda: native.sample(features, max_length),
    }
    timings = time_interleaved(contenders, rounds.rounds, rounds.warmup, device)
    row = {
        "row": "sample",
        "device": device.type,
        "cell_type": cell_type,
        "images": images,
        "max_length": max_length,
        "mean_words": float((project_captions != NULL_ID).sum(1).float().mean()),
        "same_captions": float((project_captions == native_captions).all(1).float().mean()),
    }
    for name, timing in timings.items():
        row[f"{name}_captions_per_s"] = images / timing.median
        row[f"{name}_spread"] = timing.spread
    row["speedup"] = row["project_captions_per_s"] / row["native_captions_per_s"]
    return row


def bench_memory(cell_type: str, batch: int, shapes: Shapes, device: torch.device) -> dict:
    """Peak MiB allocated by one training step (after a warm-up step, with the grads already freed)."""
    project, native = make_pair(cell_type, shapes, device)
    features, captions = make_batch(batch, shapes, device)
    row = {"row": "memory", "device": device.type, "cell_type": cell_type, "batch": batch}
    for name, model in (("project", project), ("native", native)):
        step = training_step(model, features, captions)
        step()  # Adam's state exists from here on, as in training: part of the baseline
        model.zero_grad(set_to_none=True)  # so that the step's own zero_grad frees nothing mid-measurement
        row[f"{name}_mib"] = peak_memory_bytes(step, device) / 2**20
    row["ratio"] = row["native_mib"] / row["project_mib"]
    return row


def training_step_flops(
    cell_type: str, batch: int, positions: int, shapes: Shapes, projected_rows: int | None = None
) -> float:
    """GEMM FLOPs (2mnk each) of one training step, forward + backward; elementwise work not counted.

    The input projection, the recurrence and the vocabulary projection each cost 3x their
    forward (forward, gradient of the input, gradient of the weight); the feature
    projection 2x (its input, the image features, needs no gradient). Those three run over
    ``positions`` rows: the unmasked K for the useful work (a caption leaves the recurrence
    after its last word), N * T for what the padded native model executes. The input
    projection runs over ``projected_rows`` instead when given: the project projects each
    distinct input word once.
    """
    gates = CELLS[cell_type].gates
    N, D, W, H, V = batch, shapes.input_dim, shapes.wordvec_dim, shapes.hidden_dim, shapes.vocab_size
    feature_projection = 2 * N * D * H
    input_projection = 2 * (positions if projected_rows is None else projected_rows) * W * gates * H
    recurrence = 2 * positions * H * gates * H
    vocab_projection = 2 * positions * H * V
    return 2 * feature_projection + 3 * (input_projection + recurrence + vocab_projection)


def matmul_gflops(device: torch.device, rounds: Rounds, m: int = 8192, k: int = 512, n: int = 1004) -> dict[str, float]:
    """GFLOP/s of a plain float32 (m x k) @ (k x n): the machine's practical GEMM rate.

    ``matmul`` is torch.matmul (MKL's sgemm on an x86 CPU build). On CPU, ``onednn`` is the
    same product through oneDNN (a private op, the one Inductor uses; skipped if absent):
    oneDNN is also what nn.LSTM runs on CPU, so it shows how much of a gap is the GEMM library.
    """
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    contenders = {"matmul": lambda: torch.matmul(a, b)}
    if device.type == "cpu":
        weight = b.T.contiguous()  # (n, k), nn.Linear's layout

        def onednn() -> Tensor:
            return torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")

        with contextlib.suppress(Exception):  # a build without the op: leave the column out
            if torch.allclose(onednn(), a @ b, rtol=1e-3, atol=1e-3):
                contenders["onednn"] = onednn
    timings = time_interleaved(contenders, rounds.rounds, rounds.warmup, device)
    return {name: 2 * m * k * n / timing.median / 1e9 for name, timing in timings.items()}


def flops_row(step_row: dict, shapes: Shapes, reference: dict[str, float]) -> dict:
    """Achieved GFLOP/s of a measured training step.

    ``{name}_gflops`` divides the same useful work (every per-position GEMM over the unmasked
    tokens) by each contender's time; ``{name}_executed_gflops`` divides what that contender
    runs: the project projects each distinct input word once, native runs all N * T positions.
    """
    cell_type, batch = step_row["cell_type"], step_row["batch"]
    scored = step_row["scored_tokens"]
    useful = training_step_flops(cell_type, batch, scored, shapes)
    executed = {
        "project": training_step_flops(
            cell_type, batch, scored, shapes, projected_rows=step_row["distinct_input_words"]
        ),
        "native": training_step_flops(cell_type, batch, batch * shapes.time_steps, shapes),
    }
    row = {
        "row": "flops",
        "device": step_row["device"],
        "cell_type": cell_type,
        "batch": batch,
        "useful_gflop": useful / 1e9,
        **{f"{name}_gflops": rate for name, rate in reference.items()},
    }
    for name in ("project", "native"):
        if f"{name}_ms" in step_row:
            seconds = step_row[f"{name}_ms"] / 1e3
            row[f"{name}_gflops"] = useful / seconds / 1e9
            row[f"{name}_executed_gflops"] = executed[name] / seconds / 1e9
            row[f"{name}_fraction"] = row[f"{name}_gflops"] / reference["matmul"]
    return row


def delivery_rate(loader: Iterable, batches: int) -> tuple[float, float]:
    """(captions/s over up to ``batches`` batches after the first, seconds until the first batch).

    A batch is any sequence whose second item holds the captions: ``(features, captions, ...)``.
    """
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first read: reported apart from the steady rate
    first = time.perf_counter()
    delivered = 0
    for _, batch in zip(range(batches), iterator):
        delivered += batch[1].shape[0]
    return delivered / (time.perf_counter() - first), first - start


def bench_data_module(data_dir: Path, num_workers: int, batch: int, batches: int, train_captions_per_s: float) -> dict:
    """Captions/s delivered by CaptionDataModule's training loader; ratio = delivered / trained."""
    from caption_torch.data.datamodule import CaptionDataModule
    from caption_torch.data.sources import open_source

    datamodule = CaptionDataModule(open_source(data_dir), batch_size=batch, num_workers=num_workers, pin_memory=False)
    datamodule.setup("fit")
    rate, startup = delivery_rate(datamodule.train_dataloader(), batches)
    return {
        "row": "data",
        "num_workers": num_workers,
        "batch": batch,
        "captions_per_s": rate,
        "startup_s": startup,
        "train_captions_per_s": train_captions_per_s,
        "ratio": rate / train_captions_per_s,
    }


def coco_sized_data_dir(data_dir: str | None) -> Path:
    """``data_dir`` (a COCO-sized synthetic dataset is written there if it is missing or empty),
    or else the cached COCO-sized synthetic dataset (generated on first use)."""
    from caption_torch.data.synthetic.generate import ensure_synthetic_dataset, write_synthetic_dataset

    if data_dir is None:
        return ensure_synthetic_dataset("coco", seed=0)
    directory = Path(data_dir)
    if not directory.exists() or not any(directory.iterdir()):
        write_synthetic_dataset(directory, size="coco", seed=0)
    return directory


def profile_training_step(model: nn.Module, features: Tensor, captions: Tensor, steps: int = 2, top: int = 15) -> str:
    """torch.profiler's key_averages table (sorted by self time) over ``steps`` training steps."""
    step = training_step(model, features, captions)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if features.is_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    sort_by = "self_device_time_total" if features.is_cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=top)
