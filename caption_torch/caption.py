"""Caption image files with a trained checkpoint, extracting their features as its training folder recorded.

    python -m caption_torch.caption --ckpt lightning_logs/version_0/checkpoints/last.ckpt photo.jpg holiday/
    python -m caption_torch.caption --ckpt CKPT --beam-size 3 --jsonl captions.jsonl photos/

The checkpoint names its data folder; that folder's ``features.json`` (written by
``python -m caption_torch.prepare``) says which backbone, weights and PCA made the features the
model learned from, and the same are applied to each image here. One line per image:
``path<TAB>caption``. A checkpoint trained on features made elsewhere (cs231n's own files,
the embedded dataset) is refused: nothing can make an image's features match those.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from caption_torch import guard, vocabulary
from caption_torch.cli.argtypes import check_writable_file, positive_int
from caption_torch.features import vgg
from caption_torch.features.extractor import RecordedExtractor
from caption_torch.features.record import RecordError
from caption_torch.metrics.coco import caption_text
from caption_torch.models.decoding import decode
from caption_torch.training.checkpointing import CheckpointError, load_system, read_checkpoint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_paths(arguments: list[Path]) -> list[Path]:
    """Files as given; folders as their image files (by suffix), sorted; a missing path is a ValueError."""
    paths = []
    for argument in arguments:
        if argument.is_dir():
            paths += sorted(p for p in argument.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif argument.exists():
            paths.append(argument)
        else:
            raise ValueError(f"{argument}: no such file or folder")
    if not paths:
        raise ValueError(f"no image files in {', '.join(map(str, arguments))}")
    return paths


def training_folder(checkpoint: dict, path: Path) -> tuple[str | None, bool]:
    """The data folder a checkpoint was trained on (None: the embedded data) and whether it used the PCA features."""
    hparams = checkpoint.get("datamodule_hyper_parameters")
    if not isinstance(hparams, dict) or "data_dir" not in hparams:
        raise CheckpointError(
            f"checkpoint {path} does not record its training data folder (was it written by train.py?)"
        )
    return hparams["data_dir"], bool(hparams.get("pca_features", True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by train.py")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of them")
    parser.add_argument("--beam-size", type=positive_int, default=1, help="beam width; 1 is greedy (default: 1)")
    parser.add_argument("--max-length", type=positive_int, default=30, help="longest caption (default: 30)")
    parser.add_argument("--jsonl", type=Path, default=None, help="also write one JSON line per image here")
    parser.add_argument(
        "--weights", default=None, help="a local copy of the recorded weights file (vgg16-397923af.pth), if it moved"
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default: 16)")
    return parser


@guard.entry_point("caption", lambda argv: Path(guard.option_value(argv, "--ckpt") or "x").parent)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.jsonl is not None:
            check_writable_file(args.jsonl, "--jsonl")
        paths = image_paths(args.images)
        data_dir, pca_features = training_folder(read_checkpoint(args.ckpt), args.ckpt)
        if data_dir is None:
            raise RecordError(
                f"checkpoint {args.ckpt} was trained on the embedded dataset, whose features are "
                "made from scene descriptions, not images: it cannot caption an image file"
            )
        if not Path(data_dir).is_dir():
            raise RecordError(
                f"checkpoint {args.ckpt} was trained on {data_dir}, which is gone: its features.json "
                "says how to make features for new images"
            )
        extractor = RecordedExtractor(data_dir, pca_features, args.weights)
        model = load_system(args.ckpt).model.eval()
        width = extractor.pca.dim if extractor.pca is not None else vgg.FC7_DIM
        if model.input_dim != width:
            raise CheckpointError(
                f"checkpoint {args.ckpt} expects {model.input_dim}-d features; {data_dir} makes {width}-d ones"
            )
    except (ValueError, vgg.WeightsError) as error:  # CheckpointError, RecordError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    test_backbone = extractor.source.is_test_backbone
    if test_backbone:
        print(f"warning: {vgg.TEST_BACKBONE_LABEL}", file=sys.stderr)
    features, kept, problems = extractor.features(paths, args.batch_size)
    for path, reason in problems.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    idx_to_word = vocabulary.index_words(model.word_to_idx)
    dtype = next(model.parameters()).dtype
    method = "beam" if args.beam_size > 1 else "greedy"
    with torch.inference_mode():
        ids = (
            decode(
                model,
                torch.from_numpy(features).to(dtype),
                method,
                beam_size=args.beam_size,
                max_length=args.max_length,
            )
            if len(kept)
            else torch.zeros(0, 1, dtype=torch.long)
        )
    captions = [caption_text(row, idx_to_word) for row in ids]
    for path, caption in zip(kept, captions):
        print(f"{path}\t{caption}" + ("\t[TEST backbone]" if test_backbone else ""))
    if args.jsonl is not None:
        with open(args.jsonl, "w", encoding="utf-8") as out:
            for path, caption in zip(kept, captions):
                record = {
                    "image": str(path),
                    "caption": caption,
                    "backbone": extractor.source.describe(),
                    "test_backbone": test_backbone,
                    "decoding": f"beam {args.beam_size}" if method == "beam" else "greedy",
                }
                out.write(json.dumps(record) + "\n")
            for path, reason in problems.items():
                out.write(json.dumps({"image": str(path), "skipped": reason}) + "\n")
    if not kept:
        (path, reason), more = next(iter(problems.items())), len(problems) - 1
        print(f"error: no image could be captioned: {path}: {reason}" + (f" ({more} more above)" if more else ""),
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
