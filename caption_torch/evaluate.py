"""Caption a split with a trained checkpoint and score it as the COCO caption evaluation does.

    python -m caption_torch.evaluate --ckpt lightning_logs/version_0/checkpoints/last.ckpt
    python -m caption_torch.evaluate --ckpt CKPT --beam-size 3 --show 8 --out grid.png
    python -m caption_torch.evaluate --ckpt CKPT --compare-beam-size 3 --html results/   # greedy against beam 3
    python -m caption_torch.evaluate --ckpt CKPT --compare OTHER.ckpt                     # two checkpoints

Every image of the split is captioned (batched) and compared with all of its
reference captions: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap's numbers;
METEOR needs java). The captions are written as JSON lines (image row, URL or
scene, generated caption, references, per-image CIDEr-D and BLEU-4) and the table
as JSON, next to the checkpoint unless --jsonl / --json say where.

--compare CKPT2 and the --compare-* decoding flags describe a second run on the same
images; what they leave out is the first run's. --html DIR writes a static page to
browse every image with its captions and scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from caption_torch.cli.argtypes import check_writable_file, check_writable_folder, positive_float, positive_int
from caption_torch.data import cs231n as coco
from caption_torch.data.datamodule import CaptionDataModule, ImageDataset
from caption_torch.evaluation.plots import caption_grid
from caption_torch.evaluation.report import write_html_report
from caption_torch.metrics.coco import COCO_METRICS, caption_text, evaluate_captions, scores_per_image
from caption_torch.models.config import CaptionConfig
from caption_torch.models.decoding import DECODE_METHODS, decode
from caption_torch.training.checkpointing import (  # noqa: F401 (CheckpointError and load_model: re-exported)
    CheckpointError,
    check_model_fits_data,
    load_model,
    load_system,
)


@dataclass(frozen=True)
class Run:
    """One checkpoint decoded one way: a column of the table."""

    checkpoint: Path
    method: str
    beam_size: int

    @property
    def decoding(self) -> str:
        return f"beam {self.beam_size}" if self.method == "beam" else self.method

    def describe(self) -> dict:
        return {"checkpoint": str(self.checkpoint), "method": self.method, "beam_size": self.beam_size}


def describe_run(run: Run, config: CaptionConfig) -> str:
    """How a run's checkpoint (of this config) was trained and is decoded: "lstm self-critical (mean), greedy"."""
    training = f"self-critical ({config.self_critical})" if config.self_critical else "cross-entropy"
    return f"{config.decoder} {training}, {run.decoding}"


def runs_from_args(args: argparse.Namespace) -> list[Run]:
    """The run --ckpt/--method/--beam-size ask for, and the one --compare* ask for if any.

    A decoder left unnamed is beam search when its beam is wider than 1, else greedy; the
    second run takes the first run's checkpoint and decoding where its flags say nothing.
    """
    first = Run(args.ckpt, args.method or ("beam" if args.beam_size > 1 else "greedy"), args.beam_size)
    if args.compare is None and args.compare_method is None and args.compare_beam_size is None:
        return [first]
    beam_size = args.compare_beam_size or first.beam_size
    if args.compare_method is not None:
        method = args.compare_method
    elif args.compare_beam_size is not None:
        method = "beam" if beam_size > 1 else "greedy"
    else:
        method = first.method
    second = Run(args.compare or first.checkpoint, method, beam_size)
    if second == first:
        raise ValueError(f"--compare and --compare-* describe the same run as --ckpt ({first.decoding}); change one")
    return [first, second]


def caption_split(model: torch.nn.Module, images: ImageDataset, batch_size: int, **decode_args) -> list[list[int]]:
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
    parser.add_argument(
        "--jsonl",
        type=Path,
        default=None,
        help="where to write the captions as JSON lines (default: beside the checkpoint, CKPT-SPLIT-METHODBEAM.jsonl)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the score table as JSON (default: the --jsonl path ending .scores.json)",
    )
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts pycocoevalcap's java jar)")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="CKPT2",
        help="also caption the same images with this checkpoint and compare (default decoding: the first run's)",
    )
    parser.add_argument(
        "--compare-method",
        choices=DECODE_METHODS,
        default=None,
        help="decoder of the compared run (default: the first run's; beam if --compare-beam-size > 1, greedy if 1)",
    )
    parser.add_argument(
        "--compare-beam-size",
        type=positive_int,
        default=None,
        help="beam width of the compared run (default: --beam-size); alone, it compares decodings of --ckpt",
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a static results page (index.html, data.js, drawn scenes) into DIR",
    )
    parser.add_argument("--show", type=int, default=0, metavar="N", help="draw N images with their captions")
    parser.add_argument("--out", type=Path, default=Path("captions.png"), help="PNG for --show (default: captions.png)")
    return parser


def print_table(scores: list[dict], runs: list[Run]) -> None:
    """One ``name: value`` line per metric for one run; for two, a column each and their difference."""

    def cell(value):
        return "n/a" if value is None else f"{value:.4f}"

    if len(runs) == 1:
        for name in COCO_METRICS:
            print(f"{name}: {cell(scores[0][name])}")
        return
    for letter, run in zip("AB", runs):
        print(f"  {letter}: {run.checkpoint}, {run.decoding} decoding")
    print(f"{'metric':<8} {'A':>7} {'B':>7} {'B - A':>8}")
    for name in COCO_METRICS:
        first, second = scores[0][name], scores[1][name]
        difference = "" if first is None or second is None else f"{second - first:+.4f}"
        print(f"{name:<8} {cell(first):>7} {cell(second):>7} {difference:>8}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = runs_from_args(args)
        jsonl = args.jsonl or args.ckpt.with_name(
            f"{args.ckpt.stem}-{args.split}-{runs[0].method}{runs[0].beam_size}.jsonl"
        )
        table = args.json or jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".scores.json")
        outputs = [(jsonl, "--jsonl"), (table, "--json")] + ([(args.out, "--out")] if args.show > 0 else [])
        for path, flag in outputs:  # before the work, not after it
            check_writable_file(path, flag)
        if args.html is not None:
            check_writable_folder(args.html, "--html")
        systems = {run.checkpoint: load_system(run.checkpoint) for run in runs}
        models = {checkpoint: system.model.eval() for checkpoint, system in systems.items()}
        dm = CaptionDataModule(args.data_dir, pca_features=not args.full_features, synthetic_size=args.synthetic_size)
        dm.prepare_data()
        dm.setup("validate")
        for model in models.values():
            check_model_fits_data(model, dm.word_to_idx, dm.feature_dim)
            try:
                model.check_max_length(args.max_length)  # the Transformer generates at most its positions
            except ValueError as error:
                raise ValueError(f"--max-length {args.max_length}: {error}") from None
    except ValueError as error:  # CheckpointError and CocoDataError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    images = dm.val_set if args.split == "val" else dm.train_images
    if args.max_images is not None:
        images = ImageDataset(
            images.split_captions, images.features, images.image_rows[: args.max_images], images.split
        )
    references = [[caption_text(ref, dm.idx_to_word) for ref in images.references(i)] for i in range(len(images))]

    candidates, scores, per_image = [], [], []
    for run in runs:
        generator = torch.Generator().manual_seed(args.seed)  # each run samples as it would alone
        decode_args = dict(method=run.method, beam_size=run.beam_size, temperature=args.temperature,
                           max_length=args.max_length, generator=generator)  # fmt: skip
        generated = caption_split(models[run.checkpoint], images, args.batch_size, **decode_args)
        candidates.append([caption_text(ids, dm.idx_to_word) for ids in generated])
        notice = None if scores else (lambda line: print(f"notice: {line}", file=sys.stderr))  # say it once
        scores.append(evaluate_captions(candidates[-1], references, with_meteor=not args.no_meteor, notice=notice))
        per_image.append(scores_per_image(candidates[-1], references))

    if len(runs) == 1:
        print(f"{args.split} split, {len(images)} images, {runs[0].decoding} decoding, checkpoint {args.ckpt}")
    else:
        print(f"{args.split} split, {len(images)} images, two runs")
    print_table(scores, runs)

    sources = coco.image_sources(dm.data_dir, args.split, dm.num_images[args.split])
    rows = images.image_rows.tolist()
    with open(jsonl, "w") as out:
        for i, row in enumerate(rows):
            source = sources[row]
            record = {"image": row, ("url" if isinstance(source, str) else "scene"): source,
                      "generated": candidates[0][i], "references": references[i],
                      **{name: float(values[i]) for name, values in per_image[0].items()}}  # fmt: skip
            if len(runs) == 2:
                record["compared"] = {"generated": candidates[1][i],
                                      **{name: float(values[i]) for name, values in per_image[1].items()}}  # fmt: skip
            out.write(json.dumps(record) + "\n")
    print(f"captions: {jsonl}")
    summary = {"split": args.split, "images": len(images), "captions": str(jsonl),
               "runs": [run.describe() | {"scores": run_scores} for run, run_scores in zip(runs, scores)]}  # fmt: skip
    table.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"scores: {table}")

    if args.html is not None:
        page = write_html_report(
            args.html,
            title=f"{args.split} split, {len(images)} images",
            runs=[(f"{run.checkpoint.name}, {run.decoding}", run_scores) for run, run_scores in zip(runs, scores)],
            image_rows=rows,
            sources=[sources[row] for row in rows],
            references=references,
            candidates=candidates,
            per_image=per_image,
        )
        print(f"results page: {page}")

    if args.show > 0:
        chosen = np.random.default_rng(args.seed).choice(len(images), min(args.show, len(images)), replace=False)
        if len(runs) == 1:
            panels = [(sources[images.image_rows[i]], candidates[0][i], references[i][0]) for i in chosen]
            title = f"{args.split} images, {runs[0].decoding} decoding"
        else:  # both runs' captions of each image, labelled A and B as in the table
            panels = [(sources[images.image_rows[i]], [("A", candidates[0][i]), ("B", candidates[1][i])],
                       references[i][0]) for i in chosen]  # fmt: skip
            described = [describe_run(run, systems[run.checkpoint].config) for run in runs]
            title = f"{args.split} images. A: {described[0]}; B: {described[1]}"
        print(f"picture: {caption_grid(panels, args.out, title=title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
