"""The Transformer captioner against the same model built from nn.TransformerDecoder, timed interleaved.

    python -m benchmarks.transformer                      # COCO sizes, batches 25 and 512
    python -m benchmarks.transformer --batches 25 --rounds 5 --sampling
    python -m benchmarks.transformer --cs231n-version 2025   # 2025-2026's layer against activation="gelu"

Rows: one training step (loss, backward, fused Adam; dropout on in both models) per batch
size, and optionally greedy sampling of 500 images x 30 words with cached keys and values
against cs231n's way (the whole model re-run for every word) and against the native modules
fed one word at a time. Each row gives the median
and the [min, max] range over the rounds; the contenders alternate within every round.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from benchmarks.rows import coco_like_captions, coco_vocab
from benchmarks.timing import Timing, format_table, peak_memory_bytes, time_interleaved
from caption_torch import CaptioningTransformer
from caption_torch.functional import sinusoidal_positions
from caption_torch.models.transformer_layers import CS231N_VERSIONS


@dataclass(frozen=True)
class TransformerShapes:
    """Model and caption sizes; the defaults are cs231n's COCO setup for its Transformer."""

    input_dim: int = 512  # D: fc7 features after PCA
    wordvec_dim: int = 256  # W
    num_heads: int = 2
    num_layers: int = 2
    vocab_size: int = 1004  # V
    time_steps: int = 16  # T predicted tokens; captions hold T + 1 = 17
    max_length: int = 30  # positions the models take (cs231n's setting)
    cs231n_version: int = 2021  # the decoder layer: 2021 (ReLU feed-forward) or 2025 (GELU)


class NativeCaptioningTransformer(nn.Module):
    """The same captioner with torch's own modules: nn.TransformerDecoder (batch_first, post-norm; ReLU for
    cs231n's 2021 layer, exact GELU for its 2025 layer)."""

    def __init__(self, word_to_idx: dict[str, int], shapes: TransformerShapes, dropout: float = 0.1) -> None:
        super().__init__()
        W = shapes.wordvec_dim
        self.null_id = word_to_idx["<NULL>"]
        self.visual_projection = nn.Linear(shapes.input_dim, W)
        self.embedding = nn.Embedding(len(word_to_idx), W, padding_idx=self.null_id)
        self.register_buffer("positions", sinusoidal_positions(shapes.max_length, W))
        self.dropout = nn.Dropout(dropout)
        activation = "relu" if shapes.cs231n_version == 2021 else "gelu"
        layer = nn.TransformerDecoderLayer(W, shapes.num_heads, 2048, dropout, activation=activation,
                                           batch_first=True)  # fmt: skip
        self.transformer = nn.TransformerDecoder(layer, shapes.num_layers)
        self.output = nn.Linear(W, len(word_to_idx))

    @classmethod
    def from_project(cls, project: CaptioningTransformer, shapes: TransformerShapes) -> NativeCaptioningTransformer:
        """A native model holding the project model's weights (query, key, value stacked as torch stacks them)."""
        native = cls(project.word_to_idx, shapes).to(project.output.weight.device)
        with torch.no_grad():
            for name in ("visual_projection", "embedding", "output"):
                getattr(native, name).load_state_dict(getattr(project, name).state_dict())
            for ours, theirs in zip(project.transformer.layers, native.transformer.layers):
                for attention, native_attention in ((ours.self_attn, theirs.self_attn),
                                                    (ours.cross_attention, theirs.multihead_attn)):  # fmt: skip
                    parts = (attention.query, attention.key, attention.value)
                    native_attention.in_proj_weight.copy_(torch.cat([p.weight for p in parts]))
                    native_attention.in_proj_bias.copy_(torch.cat([p.bias for p in parts]))
                    native_attention.out_proj.load_state_dict(attention.proj.state_dict())
                linears = (ours.linear1, ours.linear2) if ours.cs231n_version == 2021 else (ours.ffn.fc1, ours.ffn.fc2)
                for module, native_module in zip((*linears, *ours.norms),
                                                 (theirs.linear1, theirs.linear2, theirs.norm1, theirs.norm2,
                                                  theirs.norm3)):  # fmt: skip
                    native_module.load_state_dict(module.state_dict())
        return native

    def forward(self, features: Tensor, captions: Tensor) -> Tensor:
        """(N, D), (N, T) -> scores (N, T, V)."""
        T = captions.shape[1]
        words = self.dropout(self.embedding(captions) + self.positions[:T])
        memory = self.visual_projection(features)[:, None]
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=captions.device)
        return self.output(self.transformer(words, memory, tgt_mask=causal, tgt_is_causal=True))

    @torch.no_grad()
    def sample(self, features: Tensor, max_length: int, start_id: int) -> Tensor:
        """Greedy words (N, max_length), no early stop, fed one at a time with each layer's inputs cached.

        ``nn.MultiheadAttention`` takes keys and values unprojected, so each step re-projects the
        cached inputs of every earlier position; this is as close as the native modules come to
        caching keys and values.
        """
        self.eval()
        N = features.shape[0]
        memory = self.visual_projection(features)[:, None]  # (N, 1, W)
        words = torch.full((N,), start_id, dtype=torch.long, device=features.device)
        caches: list[Tensor | None] = [None] * len(self.transformer.layers)
        chosen = []
        for t in range(max_length):
            x = self.embedding(words[:, None]) + self.positions[t]  # (N, 1, W)
            for i, layer in enumerate(self.transformer.layers):
                caches[i] = x if caches[i] is None else torch.cat([caches[i], x], dim=1)  # (N, t + 1, W)
                x = layer.norm1(x + layer.self_attn(x, caches[i], caches[i], need_weights=False)[0])
                x = layer.norm2(x + layer.multihead_attn(x, memory, memory, need_weights=False)[0])
                x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
            words = self.output(x)[:, 0].argmax(dim=1)
            chosen.append(words)
        return torch.stack(chosen, dim=1)

    def loss(self, features: Tensor, captions: Tensor) -> Tensor:
        """cs231n's Transformer loss: cross-entropy of non-<NULL> targets, divided by N * T."""
        scores = self(features, captions[:, :-1])
        targets = captions[:, 1:]
        nll = nn.functional.cross_entropy(scores.flatten(0, 1), targets.flatten(), reduction="none")
        return (nll * (targets.flatten() != self.null_id)).mean()


def make_pair(shapes: TransformerShapes, seed: int = 0) -> tuple[CaptioningTransformer, NativeCaptioningTransformer]:
    """The project's model and its native copy, holding the same weights."""
    torch.manual_seed(seed)
    project = CaptioningTransformer(
        coco_vocab(shapes.vocab_size),
        shapes.input_dim,
        shapes.wordvec_dim,
        num_heads=shapes.num_heads,
        num_layers=shapes.num_layers,
        max_length=shapes.max_length,
        cs231n_version=shapes.cs231n_version,
    )
    return project, NativeCaptioningTransformer.from_project(project, shapes)


def make_batch(batch: int, shapes: TransformerShapes, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random (batch, D) features and COCO-like (batch, T + 1) captions."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, shapes.input_dim, generator=generator)
    return features, coco_like_captions(batch, shapes, generator)


def training_step(model: nn.Module, features: Tensor, captions: Tensor) -> Callable[[], None]:
    """One optimisation step as a closure: zero_grad, loss, backward, fused Adam (dropout on: train mode)."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(features, captions).backward()
        optimizer.step()

    return step


def eval_loss_difference(shapes: TransformerShapes, batch: int = 8) -> float:
    """|project loss - native loss| with dropout off: the two contenders compute the same model."""
    project, _ = make_pair(shapes)
    with torch.no_grad():  # away from the near-uniform scores of a fresh model, where any two models agree
        generator = torch.Generator().manual_seed(1)
        for param in project.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    native = NativeCaptioningTransformer.from_project(project, shapes)
    features, captions = make_batch(batch, shapes)
    with torch.no_grad():
        return abs(project.eval().loss(features, captions).item() - native.eval().loss(features, captions).item())


def _row(name: str, timings: dict[str, Timing], ours: str, theirs: str) -> dict:
    def ms(timing: Timing) -> tuple[float, float, float]:
        return 1e3 * timing.median, 1e3 * min(timing.samples), 1e3 * max(timing.samples)

    (ours_ms, ours_low, ours_high), (theirs_ms, theirs_low, theirs_high) = ms(timings[ours]), ms(timings[theirs])
    return dict(
        row=name,
        ours=ours,
        ours_ms=ours_ms,
        ours_range=f"{ours_low:.1f}-{ours_high:.1f}",
        theirs=theirs,
        theirs_ms=theirs_ms,
        theirs_range=f"{theirs_low:.1f}-{theirs_high:.1f}",
        ratio=theirs_ms / ours_ms,
    )


def bench_training_step(batch: int, shapes: TransformerShapes, rounds: int, warmup: int) -> dict:
    """Median seconds of one training step, project against native, at one batch size."""
    project, native = make_pair(shapes)
    features, captions = make_batch(batch, shapes)
    contenders = {"project": training_step(project, features, captions),
                  "native": training_step(native, features, captions)}  # fmt: skip
    return _row(f"train step, batch {batch}", time_interleaved(contenders, rounds, warmup, torch.device("cpu")),
                "project", "native")  # fmt: skip


def bench_sampling(images: int, words: int, shapes: TransformerShapes, rounds: int, warmup: int) -> list[dict]:
    """Greedy sampling with cached keys and values against re-running the model for every word, and against
    the native modules fed one word at a time (:meth:`NativeCaptioningTransformer.sample`)."""
    project, native = make_pair(shapes)
    features, _ = make_batch(images, shapes)
    with torch.no_grad():  # no <END> while timing: every caption runs all its words in every contender
        project.output.bias[project.end_id] = -math.inf
        native.output.bias[project.end_id] = -math.inf
    contenders = {
        "cached": lambda: project.sample(features, words),
        "re-run": lambda: project.sample_without_cache(features, words),
        "native cached": lambda: native.sample(features, words, project.start_id),
    }
    timings = time_interleaved(contenders, rounds, warmup, torch.device("cpu"))
    name = f"greedy {images} x {words} words"
    return [_row(name, timings, "cached", "re-run"), _row(name, timings, "cached", "native cached")]


def bench_memory(batch: int, shapes: TransformerShapes) -> dict:
    """Peak bytes allocated during one training step (after a first step made Adam's state), project and native."""
    project, native = make_pair(shapes)
    features, captions = make_batch(batch, shapes)
    peaks = {}
    for name, model in (("project", project), ("native", native)):
        step = training_step(model, features, captions)
        step()
        peaks[name] = peak_memory_bytes(step, torch.device("cpu"))
    return dict(batch=batch, project_mib=peaks["project"] / 2**20, native_mib=peaks["native"] / 2**20,
                ratio=peaks["native"] / peaks["project"])  # fmt: skip


COLUMNS = [
    ("row", "row", ""),
    ("ours", "contender", ""),
    ("ours_ms", "ms", ".1f"),
    ("ours_range", "range", ""),
    ("theirs", "against", ""),
    ("theirs_ms", "ms", ".1f"),
    ("theirs_range", "range", ""),
    ("ratio", "speed-up", ".2f"),
]

MEMORY_COLUMNS = [
    ("batch", "batch", "d"),
    ("project_mib", "project MiB", ".1f"),
    ("native_mib", "native MiB", ".1f"),
    ("ratio", "native / project", ".2f"),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[25, 512],
        help="training batch sizes; none: no training rows (default: 25 512)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per row (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--sampling", action="store_true", help="add the 500 x 30 greedy-sampling row")
    parser.add_argument("--memory", action="store_true", help="add the peak memory of a step at each batch size")
    parser.add_argument(
        "--cs231n-version",
        type=int,
        choices=list(CS231N_VERSIONS),
        default=2021,
        help="the project's decoder layer and the native one's activation: "
        + "; ".join(f"{year}: {text}" for year, text in CS231N_VERSIONS.items())
        + " (default: 2021)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shapes = TransformerShapes(cs231n_version=args.cs231n_version)
    print(f"cs231n {args.cs231n_version} layer; eval loss |project - native| = {eval_loss_difference(shapes):.2e}  "
          f"(threads: {torch.get_num_threads()})")  # fmt: skip
    results = [bench_training_step(batch, shapes, args.rounds, args.warmup) for batch in args.batches]
    if args.sampling:
        results += bench_sampling(500, 30, shapes, args.rounds, args.warmup)
    print(format_table(results, COLUMNS))
    if args.memory:
        memory = [bench_memory(batch, shapes) for batch in args.batches]
        print(format_table(memory, MEMORY_COLUMNS))
        results += memory
    return results


if __name__ == "__main__":
    main()
