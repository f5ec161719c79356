"""Caption a split with a trained checkpoint and score it: BLEU-1..4 and CIDEr-D.

    python -m caption_torch.evaluate --ckpt lightning_logs/version_0/checkpoints/last.ckpt
    python -m caption_torch.evaluate --ckpt CKPT --beam-size 3 --show 8 --out grid.png

Every image of the split is captioned (batched) and compared with all of its
reference captions. The captions are written as JSON lines (image row, URL or
scene, generated caption, references) next to the checkpoint unless --jsonl says
where.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import coco
from .checkpointing import CheckpointError, check_model_fits_data, load_model  # noqa: F401 (CheckpointError: re-exported)
from .cli import check_writable_file, positive_float, positive_int
from .data import CaptionDataModule, ImageDataset
from .decoding import DECODE_METHODS, decode
from .metrics import caption_text, evaluate_captions
from .model import CaptioningRNN
from .plots import caption_grid


def caption_split(model: CaptioningRNN, images: ImageDataset, batch_size: int, **decode_args) -> list[list[int]]:
    """Generated captions (token ids) for every image of ``images``, in order."""
    generated: list[list[int]] = []
    for start in tqdm(range(0, len(images), batch_size), desc="captioning", unit="batch", leave=False):
        batch = images.__getitems__(list(range(start, min(start + batch_size, len(images)))))
        generated += decode(model, batch.features, **decode_args).tolist()
    return generated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by train.py")
    parser.add_argument("--data-dir", type=Path, default=None, help="coco_captioning folder (default: embedded)")
    parser.add_argument("--synthetic-size", default="default", help="embedded dataset size when no --data-dir")
    parser.add_argument("--full-features", action="store_true", help="the 4096-d fc7 features (needs --data-dir)")
    parser.add_argument("--split", choices=coco.SPLITS, default="val", help="split to caption (default: val)")
    parser.add_argument(
        "--method", choices=DECODE_METHODS, default=None, help="decoder (default: beam if --beam-size > 1, else greedy)"
    )
    parser.add_argument("--beam-size", type=positive_int, default=1, help="beam width; 1 is greedy (default: 1)")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="temperature for --method sample")
    parser.add_argument("--max-length", type=positive_int, default=30, help="longest generated caption (default: 30)")
    parser.add_argument("--max-images", type=positive_int, default=None, help="caption only the first N images")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per decoding batch (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --method sample and --show")
    parser.add_argument("--jsonl", type=Path, default=None, help="where to write the captions as JSON lines")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="draw N images with their captions")
    parser.add_argument("--out", type=Path, default=Path("captions.png"), help="PNG for --show (default: captions.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    method = args.method or ("beam" if args.beam_size > 1 else "greedy")
    jsonl = args.jsonl or args.ckpt.with_name(f"{args.ckpt.stem}-{args.split}-{method}{args.beam_size}.jsonl")
    try:
        for path, flag in [(jsonl, "--jsonl"), (args.out, "--out")][: 2 if args.show > 0 else 1]:  # before the work
            check_writable_file(path, flag)
        model = load_model(args.ckpt)
        dm = CaptionDataModule(args.data_dir, pca_features=not args.full_features, synthetic_size=args.synthetic_size)
        dm.prepare_data()
        dm.setup("validate")
        check_model_fits_data(model, dm.word_to_idx, dm.feature_dim)
    except ValueError as error:  # CheckpointError and CocoDataError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    images = dm.val_set if args.split == "val" else dm.train_images
    if args.max_images is not None:
        images = ImageDataset(
            images.split_captions, images.features, images.image_rows[: args.max_images], images.split
        )

    generator = torch.Generator().manual_seed(args.seed)
    decode_args = dict(method=method, beam_size=args.beam_size, temperature=args.temperature,
                       max_length=args.max_length, generator=generator)  # fmt: skip
    generated = caption_split(model, images, args.batch_size, **decode_args)
    candidates = [caption_text(ids, dm.idx_to_word) for ids in generated]
    references = [[caption_text(ref, dm.idx_to_word) for ref in images.references(i)] for i in range(len(images))]
    scores = evaluate_captions(candidates, references)

    label = f"beam {args.beam_size}" if method == "beam" else method
    print(f"{args.split} split, {len(images)} images, {label} decoding, checkpoint {args.ckpt}")
    for name, value in scores.items():
        print(f"{name}: {value:.4f}")

    sources = coco.image_sources(dm.data_dir, args.split, dm.num_images[args.split])
    with open(jsonl, "w") as out:
        for i, row in enumerate(images.image_rows.tolist()):
            source = sources[row]
            record = {"image": row, ("url" if isinstance(source, str) else "scene"): source,
                      "generated": candidates[i], "references": references[i]}  # fmt: skip
            out.write(json.dumps(record) + "\n")
    print(f"captions: {jsonl}")

    if args.show > 0:
        chosen = np.random.default_rng(args.seed).choice(len(images), min(args.show, len(images)), replace=False)
        panels = [(sources[images.image_rows[i]], candidates[i], references[i][0]) for i in chosen]
        print(f"picture: {caption_grid(panels, args.out, title=f'{args.split} images, {label} decoding')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
