"""``python -m caption_torch.evaluate``, step by step: caption a split with trained checkpoints and score it.

:func:`main` runs the steps in order: the runs the flags ask for (:func:`runs_from_args`),
the output paths, checked before any work (:func:`output_paths`), the checkpoints and the data
(:func:`load_runs`), the images (:func:`images_to_caption`), captions and scores of each run
(:func:`caption_and_score`), then the printed table and the files (:func:`write_captions`,
:func:`write_scores`, the optional results page and picture).
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

from caption_torch import guard
from caption_torch.cli.argtypes import (
    caption_length,
    check_writable_file,
    check_writable_folder,
    positive_float,
    positive_int,
    seed,
)
from caption_torch.data import cs231n as coco
from caption_torch.data.datamodule import CaptionDataModule, ImageDataset
from caption_torch.data.protocol import ImageSource
from caption_torch.data.sources import open_source
from caption_torch.evaluation.plots import caption_grid
from caption_torch.evaluation.report import write_html_report
from caption_torch.metrics.coco import caption_text, evaluate_captions, scores_per_image
from caption_torch.metrics.registry import metric_names
from caption_torch.models.config import MAX_LENGTH
from caption_torch.models.decoding import DECODE_METHODS, decode
from caption_torch.models.registry import CaptionConfig
from caption_torch.training.checkpointing import check_model_fits_data, load_system

USAGE = """Caption a split with a trained checkpoint and score it as the COCO caption evaluation does.

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
    parser = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by train.py")
    parser.add_argument("--data-dir", type=Path, default=None, help="coco_captioning folder (default: embedded)")
    parser.add_argument("--synthetic-size", default="default", help="embedded dataset size when no --data-dir")
    parser.add_argument("--full-features", action="store_true", help="the 4096-d fc7 features (needs --data-dir)")
    parser.add_argument("--split", choices=coco.SPLITS + coco.OPTIONAL_SPLITS, default="val",
                        help="split to caption (default: val; test where the folder has one)")  # fmt: skip
    parser.add_argument(
        "--method", choices=DECODE_METHODS, default=None, help="decoder (default: beam if --beam-size > 1, else greedy)"
    )
    parser.add_argument("--beam-size", type=positive_int, default=1, help="beam width; 1 is greedy (default: 1)")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="temperature for --method sample")
    parser.add_argument("--max-length", type=caption_length, default=MAX_LENGTH,
                        help=f"longest generated caption (default: {MAX_LENGTH})")  # fmt: skip
    parser.add_argument("--max-images", type=positive_int, default=None, help="caption only the first N images")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per decoding batch (default: 500)")
    parser.add_argument("--seed", type=seed, default=0, help="seed for --method sample and --show")
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
        for name in metric_names():
            print(f"{name}: {cell(scores[0][name])}")
        return
    for letter, run in zip("AB", runs):
        print(f"  {letter}: {run.checkpoint}, {run.decoding} decoding")
    print(f"{'metric':<8} {'A':>7} {'B':>7} {'B - A':>8}")
    for name in metric_names():
        first, second = scores[0][name], scores[1][name]
        difference = "" if first is None or second is None else f"{second - first:+.4f}"
        print(f"{name:<8} {cell(first):>7} {cell(second):>7} {difference:>8}")


@dataclass(frozen=True)
class Outputs:
    """Where the captions (JSON lines) and the score table (JSON) go."""

    captions: Path
    table: Path


@dataclass
class Loaded:
    """The checkpoints' systems (by path) and the data they are evaluated on."""

    systems: dict
    data: CaptionDataModule

    def model(self, run: Run) -> torch.nn.Module:
        return self.systems[run.checkpoint].model


@dataclass
class Results:
    """Per run: the generated captions, the COCO table, the per-image scores."""

    candidates: list[list[str]]
    scores: list[dict]
    per_image: list[dict[str, np.ndarray]]


def output_paths(args: argparse.Namespace, runs: list[Run]) -> Outputs:
    """The files to write, each checked writable (``ValueError`` naming the flag) before any work starts."""
    first = runs[0]
    jsonl = args.jsonl or args.ckpt.with_name(f"{args.ckpt.stem}-{args.split}-{first.method}{first.beam_size}.jsonl")
    table = args.json or jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".scores.json")
    for path, flag in [(jsonl, "--jsonl"), (table, "--json")] + ([(args.out, "--out")] if args.show > 0 else []):
        check_writable_file(path, flag)
    if args.html is not None:
        check_writable_folder(args.html, "--html")
    return Outputs(jsonl, table)


def load_runs(args: argparse.Namespace, runs: list[Run]) -> Loaded:
    """Every run's checkpoint and the data, checked to fit each other and ``--max-length``."""
    systems = {run.checkpoint: load_system(run.checkpoint) for run in runs}
    for system in systems.values():
        system.model.eval()
    dm = CaptionDataModule(open_source(args.data_dir, args.synthetic_size, pca_features=not args.full_features))
    dm.prepare_data()
    dm.setup("validate")
    if args.split not in dm.num_images:
        raise coco.CocoDataError(f"{dm.source.folder}: no {args.split} split (caption_torch.prepare writes one when "
                                 "its captions file has test images, as Karpathy's splits do)")  # fmt: skip
    for system in systems.values():
        check_model_fits_data(system.model, dm.word_to_idx, dm.feature_dim)
        try:
            system.model.check_max_length(args.max_length)  # the Transformer generates at most its positions
        except ValueError as error:
            raise ValueError(f"--max-length {args.max_length}: {error}") from None
    return Loaded(systems, dm)


def images_to_caption(args: argparse.Namespace, dm: CaptionDataModule) -> ImageDataset:
    """The split's images, the first ``--max-images`` of them if given."""
    images = dm.val_set if args.split == "val" else dm.train_images
    if args.split not in coco.SPLITS:  # a prepared folder's test split, which training never reads
        images = dm.split_images(args.split)
    if args.max_images is None:
        return images
    return ImageDataset(images.split_captions, images.features, images.image_rows[: args.max_images], images.split)


def caption_and_score(
    args: argparse.Namespace, runs: list[Run], loaded: Loaded, images: ImageDataset, references: list[list[str]]
) -> Results:
    """Caption the images with each run and score the captions against the references."""
    results = Results([], [], [])
    for run in runs:
        generator = torch.Generator().manual_seed(args.seed)  # each run samples as it would alone
        decode_args = dict(method=run.method, beam_size=run.beam_size, temperature=args.temperature,
                           max_length=args.max_length, generator=generator)  # fmt: skip
        generated = caption_split(loaded.model(run), images, args.batch_size, **decode_args)
        candidates = [caption_text(ids, loaded.data.idx_to_word) for ids in generated]
        notice = None if results.scores else (lambda line: print(f"notice: {line}", file=sys.stderr))  # say it once
        results.candidates.append(candidates)
        results.scores.append(evaluate_captions(candidates, references, with_meteor=not args.no_meteor, notice=notice))
        results.per_image.append(scores_per_image(candidates, references))
    return results


def write_captions(
    path: Path, rows: list[int], sources: list[ImageSource], references: list[list[str]], results: Results
) -> None:
    """One JSON line per image: its row, URL or scene, caption(s), references and per-image scores."""

    def scores_of(run: int, i: int) -> dict[str, float]:
        return {name: float(values[i]) for name, values in results.per_image[run].items()}

    with open(path, "w") as out:
        for i, row in enumerate(rows):
            source = sources[row]
            record = {"image": row, **source.record(),
                      "generated": results.candidates[0][i], "references": references[i],
                      **scores_of(0, i)}  # fmt: skip
            if len(results.candidates) == 2:
                record["compared"] = {"generated": results.candidates[1][i], **scores_of(1, i)}
            out.write(json.dumps(record) + "\n")


def write_scores(path: Path, args: argparse.Namespace, images: int, captions: Path, runs: list[Run],
                 results: Results) -> None:  # fmt: skip
    """The score table of every run as JSON."""
    summary = {"split": args.split, "images": images, "captions": str(captions),
               "runs": [run.describe() | {"scores": scores} for run, scores in zip(runs, results.scores)]}  # fmt: skip
    path.write_text(json.dumps(summary, indent=2) + "\n")


def draw_examples(args: argparse.Namespace, runs: list[Run], loaded: Loaded, images: ImageDataset, sources: list,
                  references: list[list[str]], results: Results) -> Path:  # fmt: skip
    """``--show`` images with their captions (both runs', labelled A and B as in the table) as a PNG."""
    chosen = np.random.default_rng(args.seed).choice(len(images), min(args.show, len(images)), replace=False)
    candidates = results.candidates
    if len(runs) == 1:
        panels = [(sources[images.image_rows[i]], candidates[0][i], references[i][0]) for i in chosen]
        title = f"{args.split} images, {runs[0].decoding} decoding"
    else:
        panels = [(sources[images.image_rows[i]], [("A", candidates[0][i]), ("B", candidates[1][i])],
                   references[i][0]) for i in chosen]  # fmt: skip
        described = [describe_run(run, loaded.systems[run.checkpoint].config) for run in runs]
        title = f"{args.split} images. A: {described[0]}; B: {described[1]}"
    return caption_grid(panels, args.out, title=title)


@guard.entry_point("evaluate", lambda argv: Path(guard.option_value(argv, "--ckpt") or "x").parent)
def main(argv: list[str] | None = None) -> int:
    """``python -m caption_torch.evaluate``: 0 on success, 2 with one ``error:`` line for a bad flag, checkpoint
    or data folder."""
    args = build_parser().parse_args(argv)
    try:
        runs = runs_from_args(args)
        outputs = output_paths(args, runs)
        loaded = load_runs(args, runs)
    except ValueError as error:  # CheckpointError and CocoDataError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    dm = loaded.data
    images = images_to_caption(args, dm)
    references = [[caption_text(ref, dm.idx_to_word) for ref in images.references(i)] for i in range(len(images))]
    results = caption_and_score(args, runs, loaded, images, references)

    if len(runs) == 1:
        print(f"{args.split} split, {len(images)} images, {runs[0].decoding} decoding, checkpoint {args.ckpt}")
    else:
        print(f"{args.split} split, {len(images)} images, two runs")
    print_table(results.scores, runs)

    sources = dm.source.image_sources(args.split)
    rows = images.image_rows.tolist()
    write_captions(outputs.captions, rows, sources, references, results)
    print(f"captions: {outputs.captions}")
    write_scores(outputs.table, args, len(images), outputs.captions, runs, results)
    print(f"scores: {outputs.table}")
    if args.html is not None:
        page = write_html_report(
            args.html,
            title=f"{args.split} split, {len(images)} images",
            runs=[(f"{run.checkpoint.name}, {run.decoding}", scores) for run, scores in zip(runs, results.scores)],
            image_rows=rows,
            sources=[sources[row] for row in rows],
            references=references,
            candidates=results.candidates,
            per_image=results.per_image,
        )
        print(f"results page: {page}")
    if args.show > 0:
        print(f"picture: {draw_examples(args, runs, loaded, images, sources, references, results)}")
    return 0
