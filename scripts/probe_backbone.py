"""How much of a drawn scene a backbone's fc7 keeps: linear probes for its setting, first noun and first colour.

    python scripts/probe_backbone.py                       # 1,000 scenes, the seeded random (TEST) VGG-16
    python scripts/probe_backbone.py --weights vgg16-397923af.pth --scenes 1000

Draws the first ``--scenes`` train scenes of the embedded dataset (default size) as the image
files ``caption_torch.data.synthetic.images`` writes, runs them through VGG-16 to fc7 exactly as
``caption_torch.prepare`` does, and fits one multinomial logistic regression per attribute on
standardised fc7 (L2-regularised, L-BFGS) over a seeded 80% of the scenes. Each probe's accuracy
on the other 20% is printed beside chance: the share of that 20% holding the training part's most
common value.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from caption_torch.data.synthetic.generate import ensure_synthetic_dataset
from caption_torch.data.synthetic.images import write_scene_images
from caption_torch.data.synthetic.source import SyntheticSource
from caption_torch.features.images import load_rgb, preprocess
from caption_torch.features.vgg import build_backbone

ATTRIBUTES = {
    "setting": lambda scene: scene["setting"],
    "first noun": lambda scene: scene["objects"][0]["noun"],
    "first colour": lambda scene: scene["objects"][0]["colour"],
}


def fc7_of_scenes(count: int, weights: str, seed: int, batch_size: int = 16) -> tuple[torch.Tensor, list[dict]]:
    """(count, 4096) fc7 of the first ``count`` train scenes drawn as files, and those scenes."""
    scenes = [
        source.scene for source in SyntheticSource(folder=ensure_synthetic_dataset("default")).image_sources("train")
    ]
    if not 1 <= count <= len(scenes):
        raise ValueError(f"--scenes must be at most {len(scenes)} (the default embedded dataset's train scenes), "
                         f"got {count}")  # fmt: skip
    backbone, _ = build_backbone(weights, seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_scene_images(tmp, size="default", max_images=count)
        files = [Path(tmp) / "images" / f"train_{row:06d}.png" for row in range(count)]
        with torch.inference_mode():
            for begin in range(0, count, batch_size):
                batch = torch.stack([preprocess(load_rgb(path)) for path in files[begin : begin + batch_size]])
                rows.append(backbone.fc7(batch.contiguous(memory_format=torch.channels_last)))
                print(f"\rfc7: {min(begin + batch_size, count)}/{count} scenes", end="", file=sys.stderr)
    print(file=sys.stderr)
    return torch.cat(rows).double(), scenes[:count]


def probe_accuracy(features: torch.Tensor, labels: list[str], train: torch.Tensor, held_out: torch.Tensor,
                   l2: float) -> tuple[float, float]:  # fmt: skip
    """Held-out accuracy of a multinomial logistic regression on standardised features, and chance."""
    classes = sorted(set(labels))
    targets = torch.tensor([classes.index(label) for label in labels])
    mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-12)
    x = (features - mean) / std
    weight = torch.zeros(x.shape[1], len(classes), dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ weight + bias, targets[train]) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[held_out] @ weight + bias).argmax(1)
    accuracy = (predicted == targets[held_out]).double().mean().item()
    most_common = Counter(targets[train].tolist()).most_common(1)[0][0]
    chance = (targets[held_out] == most_common).double().mean().item()
    return accuracy, chance


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=1000, help="scenes to draw and probe (default: 1000)")
    parser.add_argument("--weights", default="random", help="random (seeded TEST backbone), imagenet, or a file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random backbone and of the split")
    parser.add_argument("--l2", type=float, default=1e-3, help="L2 penalty of the probes (default: 1e-3)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scenes < 5:
        print(f"error: --scenes must be at least 5 (4 to fit, 1 held out), got {args.scenes}", file=sys.stderr)
        return 2
    try:
        features, scenes = fc7_of_scenes(args.scenes, args.weights, args.seed)
    except ValueError as error:  # a --scenes beyond the dataset, a weights file that is not VGG-16's
        print(f"error: {error}", file=sys.stderr)
        return 2
    order = torch.randperm(len(scenes), generator=torch.Generator().manual_seed(args.seed))
    cut = int(0.8 * len(scenes))
    train, held_out = order[:cut], order[cut:]
    print(f"{args.scenes} scenes, VGG-16 fc7 ({args.weights} weights), {len(train)} to fit, {len(held_out)} held out")
    print(f"{'attribute':<14}{'values':>7}{'probe':>8}{'chance':>8}")
    for name, attribute in ATTRIBUTES.items():
        labels = [attribute(scene) for scene in scenes]
        accuracy, chance = probe_accuracy(features, labels, train, held_out, args.l2)
        print(f"{name:<14}{len(set(labels)):>7}{accuracy:>8.1%}{chance:>8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
