"""The embedded dataset as image files and a captions file, for the images -> features path without internet.

    python -m caption_torch.data.synthetic.images --out scenes/ [--size tiny] [--max-images 20] [--format csv]

writes ``scenes/images/{split}_{row:06d}.png`` (each scene drawn at 256 x 256) and
``scenes/dataset_synthetic.json`` in Karpathy's format (its train images as train, the
first half of its val images as val, the rest as test), or ``scenes/captions.txt``
(``image,caption``, no split) with ``--format csv``. The captions are the embedded
dataset's, read back as words (a word its vocabulary maps to ``<UNK>`` is left out).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

from caption_torch import vocabulary
from caption_torch.data import cs231n as coco
from caption_torch.data.synthetic.generate import SIZES, ensure_synthetic_dataset
from caption_torch.data.synthetic.scenes import draw_scene
from caption_torch.data.synthetic.source import SyntheticSource

IMAGE_PIXELS = 256
FORMATS = ("karpathy", "csv")


def _captions_by_image(folder: Path, split: str, idx_to_word) -> dict[int, list[str]]:
    captions = coco.read_captions(folder)[split]
    skipped = set(vocabulary.SPECIAL_TOKENS)
    by_image: dict[int, list[str]] = {}
    for row, ids in zip(captions.image_idxs.tolist(), captions.captions):
        words = []
        for idx in ids.tolist():
            if idx_to_word[idx] == vocabulary.END:
                break
            if idx_to_word[idx] not in skipped:
                words.append(idx_to_word[idx])
        by_image.setdefault(row, []).append(" ".join(words))
    return by_image


def write_scene_images(
    out_dir: Path | str, size: str = "tiny", seed: int = 0, max_images: int | None = None, fmt: str = "karpathy"
) -> Path:
    """Draw the embedded dataset's scenes into ``out_dir/images`` and write its captions file; return that file.

    Args:
        size, seed: which embedded dataset (generated into the cache if needed).
        max_images: at most this many images of each split (val's first half val, second half test).
        fmt: ``"karpathy"`` (``dataset_synthetic.json``, with splits) or ``"csv"`` (``captions.txt``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    folder = ensure_synthetic_dataset(size, seed)
    _, idx_to_word = coco.read_vocab(folder)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    entries = []  # (file name, split, captions)
    for split in coco.SPLITS:
        scenes = [source.scene for source in SyntheticSource(folder=folder).image_sources(split)]
        captions = _captions_by_image(folder, split, idx_to_word)
        count = len(scenes) if max_images is None else min(max_images, len(scenes))
        for row in range(count):
            named_split = split if split == "train" or row < count // 2 else "test"
            entries.append((f"{split}_{row:06d}.png", named_split, captions[row], scenes[row]))
    dpi = 64
    figure = plt.figure(figsize=(IMAGE_PIXELS / dpi, IMAGE_PIXELS / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    try:
        for name, _, _, scene in entries:
            for artist in [*axes.patches, *axes.lines, *axes.collections, *axes.texts, *axes.images]:
                artist.remove()
            draw_scene(scene, axes)
            figure.savefig(out_dir / "images" / name, format="png", metadata={"Software": None})
    finally:
        plt.close(figure)
    if fmt == "csv":
        path = out_dir / "captions.txt"
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["image", "caption"])
            writer.writerows([name, caption] for name, _, captions, _ in entries for caption in captions)
        return path
    images = [
        {"filename": name, "split": split, "imgid": i, "sentences": [{"raw": c} for c in captions]}
        for i, (name, split, captions, _) in enumerate(entries)
    ]
    path = out_dir / "dataset_synthetic.json"
    path.write_text(json.dumps({"dataset": "synthetic", "images": images}), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m caption_torch.data.synthetic.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for images/ and the captions file")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="embedded dataset size (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="embedded dataset seed")
    parser.add_argument("--max-images", type=int, default=None, help="at most this many images per split")
    parser.add_argument("--format", choices=FORMATS, default="karpathy", help="captions file format")
    args = parser.parse_args(argv)
    try:
        path = write_scene_images(args.out, args.size, args.seed, args.max_images, args.format)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"images: {args.out / 'images'}\ncaptions: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
