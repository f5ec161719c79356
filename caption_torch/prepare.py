"""Images + captions -> a data folder in cs231n's layout, with VGG-16 fc7 features and their PCA, as cs231n made them.

    python -m caption_torch.prepare --images train2014_and_val2014/ --captions dataset_coco.json --out coco_mine/
    python -m caption_torch.prepare --images Flicker8k_Dataset/ --captions captions.txt --out flickr8k/
    python -m caption_torch.prepare --images DIR --captions FILE --out DIR --weights vgg16-397923af.pth  # offline
    python -m caption_torch.prepare --images DIR --captions FILE --out DIR --weights random   # TEST backbone

The folder is read by ``train.py --data-dir OUT`` (``--full-features`` for the 4096-d fc7)
and ``evaluate --split test``; ``python -m caption_torch.caption`` captions new images
with the same backbone, weights and PCA, which ``OUT/features.json`` records::

    coco2014_captions.h5              {train,val,test}_captions int32 (Nc, T), {train,val,test}_image_idxs int32
    coco2014_vocab.json               ids 0-3 <NULL> <START> <END> <UNK>, then the train words
    {split}2014_vgg16_fc7.h5          features float32 (Ni, 4096)
    {split}2014_vgg16_fc7_pca.h5      features float32 (Ni, --pca-dim), PCA fitted on train
    {split}2014_urls.txt              file:// URI of each row's image
    vgg16_fc7_pca_basis.h5            mean, components, explained_variance
    features.json                     how the features were made; each row's image file
    skipped.tsv                       images left out, with the reason (missing, unreadable, ...)

Killed, the same command continues where it stopped (``OUT/.extracting/``) and ends with
the same bytes as a run that never stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from caption_torch import guard, vocabulary
from caption_torch.cli.argtypes import positive_int
from caption_torch.data import captions as caption_files
from caption_torch.data import cs231n as coco
from caption_torch.features import images as image_io
from caption_torch.features import pca as pca_module
from caption_torch.features import record as record_module
from caption_torch.features import vgg
from caption_torch.features.extract import default_device, extract_resumable, write_json_atomically

WORK_DIR = ".extracting"
SKIPPED_FILE = "skipped.tsv"


def write_h5_atomically(path: Path, datasets: dict[str, np.ndarray]) -> None:
    """HDF5 with fixed settings and no timestamps (equal arrays, equal bytes), written through a rename."""
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w", libver="earliest", track_order=False) as f:
        for name, array in datasets.items():
            f.create_dataset(name, data=array, track_times=False)
    with open(partial, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(partial, path)


def write_text_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of the image files the captions name")
    parser.add_argument(
        "--captions",
        type=Path,
        required=True,
        action="append",
        help="COCO captions_*2014.json, Karpathy dataset_*.json or CSV image,caption; repeatable",
    )
    parser.add_argument("--out", type=Path, required=True, help="data folder to write (cs231n's layout)")
    parser.add_argument(
        "--weights",
        default=vgg.IMAGENET_WEIGHTS,
        help="'imagenet' (torchvision's file via torch.hub, default), a local copy of "
        "vgg16-397923af.pth, or 'random' (a seeded TEST backbone)",
    )
    parser.add_argument("--pca-dim", type=positive_int, default=512, help="PCA dimension (default: 512)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader processes decoding images (default: min(4, CPUs))",
    )
    parser.add_argument(
        "--min-word-count",
        type=positive_int,
        default=caption_files.MIN_WORD_COUNT,
        help="train words seen fewer times become <UNK> (default: 5)",
    )
    parser.add_argument(
        "--max-words",
        type=positive_int,
        default=caption_files.MAX_WORDS,
        help="captions cut to this many words (default: 15, T = 17)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split of unsplit images and of --weights random"
    )
    return parser


def resolve(images_dir: Path, image: caption_files.CaptionedImage) -> str | None:
    """The path (relative to ``images_dir``) of the first candidate that is a file, else None."""
    return next((name for name in image.candidates if (images_dir / name).is_file()), None)


def _check_vocabulary(train_images: list[caption_files.CaptionedImage], args: argparse.Namespace) -> list[str]:
    """The vocabulary of the train captions (``idx_to_word``); refused if no word reaches --min-word-count."""
    words = [caption_files.tokenize(caption)[: args.max_words] for image in train_images for caption in image.captions]
    idx_to_word = caption_files.build_vocabulary(words, args.min_word_count)
    if len(idx_to_word) == len(vocabulary.SPECIAL_TOKENS):
        most = max(Counter(word for caption in words for word in caption).values(), default=0)
        raise ValueError(f"--min-word-count {args.min_word_count} leaves no word in the vocabulary: the most "
                         f"frequent train word appears {most} times")  # fmt: skip
    return idx_to_word


def prepare(args: argparse.Namespace) -> int:
    images_dir, out = args.images, args.out
    if not images_dir.is_dir():
        raise ValueError(f"--images {images_dir}: not a folder")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    images = caption_files.merge([caption_files.read_caption_file(path) for path in args.captions])
    caption_files.assign_splits(images, args.seed)

    skipped: list[tuple[str, str]] = []
    kept: list[tuple[caption_files.CaptionedImage, str]] = []
    for image in images:
        found = resolve(images_dir, image)
        if found is None:
            skipped.append((image.name, "missing file"))
        else:
            kept.append((image, found))
    order = {split: i for i, split in enumerate(caption_files.SPLITS)}
    kept.sort(key=lambda item: order[item[0].split])  # rows: train, then val, then test; file order within
    for split in ("train", "val"):
        if not any(image.split == split for image, _ in kept):
            missing = [image.name for image in images if image.split == split]
            found = f"{len(missing)} missing, the first {missing[0]}" if missing else "none named"
            raise ValueError(f"no {split} image is left ({found}): a data folder needs train and val")
    num_train = sum(image.split == "train" for image, _ in kept)
    pca_module.check_dim(args.pca_dim, num_train, vgg.FC7_DIM)
    _check_vocabulary([image for image, _ in kept if image.split == "train"], args)  # before hours of extraction
    if skipped:
        print(f"{len(skipped)} images named by the captions are missing (listed in {out / SKIPPED_FILE} at the end)")

    model, weights = vgg.build_backbone(args.weights, seed=args.seed)
    if weights.is_test_backbone:
        print(f"warning: {vgg.TEST_BACKBONE_LABEL}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    names = [name for _, name in kept]
    job = {
        "weights": weights.record(),
        "max_pixels": image_io.MAX_PIXELS,
        "paths": hashlib.sha256("\n".join(str((images_dir / n).resolve()) for n in names).encode()).hexdigest(),
    }
    device = default_device()
    fc7, problems = extract_resumable(
        model, [images_dir / name for name in names], out / WORK_DIR, job, args.batch_size, args.workers, device
    )
    skipped += [(names[row], reason) for row, reason in sorted(problems.items())]

    rows_by_split: dict[str, list[int]] = {split: [] for split in caption_files.SPLITS}
    for row, (image, _) in enumerate(kept):
        if row not in problems:
            rows_by_split[image.split].append(row)
    for split in ("train", "val"):
        if not rows_by_split[split]:  # the run stops before skipped.tsv is written: the message says why
            rows = [row for row, (image, _) in enumerate(kept) if image.split == split]
            first = f"{names[rows[0]]}: {problems[rows[0]]}" + (f" ({len(rows) - 1} more)" if len(rows) > 1 else "")
            raise ValueError(f"every {split} image was skipped, nothing to write: {first}")
    pca_module.check_dim(args.pca_dim, len(rows_by_split["train"]), vgg.FC7_DIM)
    splits = [split for split in caption_files.SPLITS if rows_by_split[split]]

    tokens = {
        split: [[caption_files.tokenize(c) for c in kept[row][0].captions] for row in rows_by_split[split]]
        for split in splits
    }
    idx_to_word = _check_vocabulary([kept[row][0] for row in rows_by_split["train"]], args)
    word_to_idx = {word: idx for idx, word in enumerate(idx_to_word)}
    caption_arrays = {}
    for split in splits:
        encoded = [
            caption_files.encode(words, word_to_idx, args.max_words)
            for per_image in tokens[split]
            for words in per_image
        ]
        image_idxs = [i for i, per_image in enumerate(tokens[split]) for _ in per_image]
        caption_arrays[f"{split}_captions"] = np.stack(encoded).astype(np.int32)
        caption_arrays[f"{split}_image_idxs"] = np.asarray(image_idxs, dtype=np.int32)

    # The record goes first and is written last: a folder killed while being rewritten has none, so nothing
    # trusts it; a split this run does not have loses the files an earlier run into the same --out left.
    (out / record_module.RECORD_FILE).unlink(missing_ok=True)
    for split in set(caption_files.SPLITS) - set(splits):
        for path in (coco.feature_file(split, pca_features=False), coco.feature_file(split, pca_features=True),
                     coco.urls_file(split)):  # fmt: skip
            (out / path).unlink(missing_ok=True)
    train_fc7 = np.asarray(fc7[rows_by_split["train"]], dtype=np.float32)
    pca = pca_module.fit_pca(train_fc7, args.pca_dim)
    pca.save(out / pca_module.PCA_FILE)
    for split in splits:
        split_fc7 = train_fc7 if split == "train" else np.asarray(fc7[rows_by_split[split]], dtype=np.float32)
        write_h5_atomically(out / coco.feature_file(split, pca_features=False), {"features": split_fc7})
        write_h5_atomically(out / coco.feature_file(split, pca_features=True), {"features": pca.transform(split_fc7)})
        uris = [(images_dir / names[row]).resolve().as_uri() for row in rows_by_split[split]]
        write_text_atomically(out / coco.urls_file(split), "".join(uri + "\n" for uri in uris))
    write_h5_atomically(out / coco.CAPTIONS_FILE, caption_arrays)
    vocab = {"idx_to_word": idx_to_word, "word_to_idx": word_to_idx}
    write_text_atomically(out / coco.VOCAB_FILE, json.dumps(vocab))
    write_text_atomically(out / SKIPPED_FILE, "image\treason\n" + "".join(f"{n}\t{r}\n" for n, r in skipped))
    # As the PCA divides by max(N - 1, 1): one train image has no variance, not NaN.
    ddof = min(1, len(train_fc7) - 1)
    total_variance = float(np.var(train_fc7.astype(np.float64), axis=0, ddof=ddof).sum()) or 1.0
    record = {
        "format": record_module.FORMAT,
        "backbone": {
            "name": "vgg16",
            "layer": "fc7",
            "resize": image_io.RESIZE_TO,
            "crop": image_io.CROP_TO,
            "mean": list(image_io.IMAGENET_MEAN),
            "std": list(image_io.IMAGENET_STD),
        },
        "weights": weights.record(),
        "pca": {
            "file": pca_module.PCA_FILE,
            "dim": args.pca_dim,
            "fitted_on": "train",
            "explained_variance_ratio": round(float(pca.explained_variance.sum()) / total_variance, 6),
        },
        "images_dir": str(images_dir.resolve()),
        "images": {split: [names[row] for row in rows_by_split[split]] for split in splits},
        "skipped": {"file": SKIPPED_FILE, "count": len(skipped)},
        "captions": {
            "files": [str(path.resolve()) for path in args.captions],
            "min_word_count": args.min_word_count,
            "max_words": args.max_words,
            "seed": args.seed,
        },
    }
    write_json_atomically(out / record_module.RECORD_FILE, record)
    shutil.rmtree(out / WORK_DIR)
    counts = ", ".join(f"{split} {len(rows_by_split[split])}" for split in splits)
    print(
        f"{out}: {counts} images, {len(idx_to_word)} words, fc7 -> PCA {args.pca_dim} "
        f"({record['pca']['explained_variance_ratio']:.1%} of the variance), {weights.describe()}"
    )
    print(f"skipped {len(skipped)} images" + (f" (reasons in {out / SKIPPED_FILE})" if skipped else ""))
    return 0


@guard.entry_point("prepare", lambda argv: Path(guard.option_value(argv, "--out") or "."))
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return prepare(args)
    except (ValueError, vgg.WeightsError) as error:  # CaptionFileError, PcaError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a folder without write permission
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
