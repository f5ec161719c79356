"""Where a self-critical training step spends its time: sampling, rewards, the loss and its update.

    python -m benchmarks.self_critical                                 # a fresh LSTM at COCO sizes
    python -m benchmarks.self_critical --ckpt lightning_logs/version_0/checkpoints/last.ckpt

One step of ``--images`` images x ``--samples`` samples on the embedded data's training split:
the K samples per image (no gradient), their CIDEr-D rewards and the greedy baseline's, and the
policy-gradient loss with backward and fused Adam. The rewards' share of the step is what
matters: the CIDEr-D of every sample of the batch is computed at once, on word ids.
Medians and [min, max] over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Sequence

import numpy as np
import torch

from caption_torch.data.datamodule import CaptionDataModule
from caption_torch.data.sources import open_source
from caption_torch.metrics.cider import Sentences
from caption_torch.models.decoding import temperature_sample
from caption_torch.models.recurrent import CaptioningRNN
from caption_torch.training.checkpointing import load_model
from caption_torch.training.self_critical import reference_sentences, training_reward


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--ckpt``, sizes, ``--rounds``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="a trained checkpoint (default: a fresh LSTM, H 512, W 256)")
    parser.add_argument("--images", type=int, default=50, help="images per step (default: 50)")
    parser.add_argument("--samples", type=int, default=5, help="samples per image (default: 5)")
    parser.add_argument("--max-length", type=int, default=30, help="longest sampled caption (default: 30)")
    parser.add_argument("--rounds", type=int, default=7, help="measured steps (default: 7)")
    parser.add_argument("--synthetic-size", default="default", help="embedded dataset size (default: default)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Time ``--rounds`` self-critical steps part by part, print the table, return each part's median seconds."""
    args = build_parser().parse_args(argv)

    dm = CaptionDataModule(open_source(None, args.synthetic_size))
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    model = load_model(args.ckpt) if args.ckpt else CaptioningRNN(dm.word_to_idx, dm.feature_dim, 256, 512, "lstm")
    model.train()
    start = time.perf_counter()
    reward = training_reward(dm.train_captions, dm.word_to_idx, dm.source.folder)
    corpus_seconds = time.perf_counter() - start
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, fused=True)
    skipped, K = (model.start_id, model.null_id), args.samples
    parts: dict[str, list[float]] = {"sample": [], "rewards": [], "greedy baseline": [], "loss + update": []}
    rng = np.random.default_rng(0)
    for round_index in range(args.rounds + 1):  # the first round warms up
        batch = dm.train_images.__getitems__(rng.choice(len(dm.train_images), args.images, replace=False).tolist())
        refs, ref_image = reference_sentences(batch.references, model)
        repeated = batch.features.repeat_interleave(K, dim=0)
        times = [time.perf_counter()]
        samples = temperature_sample(model, repeated, 1.0, args.max_length)
        times.append(time.perf_counter())
        sample_image = np.repeat(np.arange(args.images), K)
        rewards = reward.scores(Sentences.from_ids(samples, model.end_id, skipped), sample_image, refs, ref_image)
        times.append(time.perf_counter())
        greedy = model.sample(batch.features, args.max_length)
        reward.scores(Sentences.from_ids(greedy, model.end_id, skipped), np.arange(args.images), refs, ref_image)
        times.append(time.perf_counter())
        per_image = rewards.reshape(args.images, K)
        advantages = (per_image - (per_image.sum(1, keepdims=True) - per_image) / (K - 1)).reshape(-1)
        loss = model.policy_loss(repeated, samples, torch.as_tensor(advantages, dtype=repeated.dtype))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
        if round_index:
            for name, begin, end in zip(parts, times, times[1:]):
                parts[name].append(end - begin)
    step = [sum(values) for values in zip(*parts.values())]
    print(f"{args.images} images x {K} samples, {torch.get_num_threads()} threads, {args.rounds} steps; "
          f"training-corpus document frequencies: {corpus_seconds:.2f} s once\n")  # fmt: skip
    print(f"{'part':>16}  {'median ms':>9}  {'range ms':>13}  {'share of step':>13}")
    for name, values in [*parts.items(), ("whole step", step)]:
        share = statistics.median(v / s for v, s in zip(values, step))
        print(f"{name:>16}  {statistics.median(values) * 1e3:9.1f}  {min(values) * 1e3:6.1f}-{max(values) * 1e3:6.1f}"
              f"  {share:13.1%}")  # fmt: skip
    return {name: statistics.median(values) for name, values in parts.items()}


if __name__ == "__main__":
    main()
