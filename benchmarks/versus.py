"""The project against itself at another git revision: training steps and sampling, interleaved in one process.

    python benchmarks/versus.py --against HEAD~3            # every row, 7 rounds
    python benchmarks/versus.py --against main --rounds 9 --rows step
    python benchmarks/versus.py --against HEAD~1 --decoders transformer --rows step
    python benchmarks/versus.py --against HEAD --quick     # toy sizes, one round: a smoke run

A change that should not move the speed (a refactor) is checked this way: the other
revision's ``caption_torch`` is extracted with ``git archive`` into a temporary folder
under another package name (its imports of ``caption_torch`` renamed with it), both models get the
same weights and inputs, and each row times them alternately (see ``timing.py``). Ratios
are this checkout's speed over the other revision's: > 1 means this checkout is faster.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.rows import (  # noqa: E402
    END_ID,
    NULL_ID,
    START_ID,
    Rounds,
    Shapes,
    coco_like_captions,
    coco_vocab,
    make_batch,
    training_step,
)
from benchmarks.timing import format_table, time_interleaved  # noqa: E402
from benchmarks.transformer import TransformerShapes  # noqa: E402
from caption_torch import CaptioningRNN, CaptioningTransformer  # noqa: E402
from caption_torch.functional import CELLS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OTHER_PACKAGE = "caption_torch_other"


def import_revision(revision: str, folder: Path):
    """``caption_torch`` as it is at ``revision``, imported as :data:`OTHER_PACKAGE` from ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "caption_torch"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "caption_torch").rename(folder / OTHER_PACKAGE)
    # Absolute imports would load this checkout's modules into the other revision: point them at its own.
    own_name = re.compile(r"^(\s*(?:from|import)\s+)caption_torch\b", re.M)
    for path in (folder / OTHER_PACKAGE).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(own_name.sub(rf"\g<1>{OTHER_PACKAGE}", text), encoding="utf-8")
    sys.path.insert(0, str(folder))
    return importlib.import_module(OTHER_PACKAGE)


def make_models(other_package, decoder: str, shapes: Shapes):
    """This checkout's model of one decoder and the other revision's, with the same weights.

    The Transformer takes ``shapes``' input, word vector and vocabulary sizes, and the heads,
    layers and positions of ``benchmarks/transformer.py`` (cs231n's 2 heads, 2 layers, 30 positions).
    """
    torch.manual_seed(0)
    if decoder == "transformer":
        sizes = TransformerShapes()
        sizes = dict(num_heads=sizes.num_heads, num_layers=sizes.num_layers, max_length=sizes.max_length)
        ours = CaptioningTransformer(coco_vocab(shapes.vocab_size), shapes.input_dim, shapes.wordvec_dim, **sizes)
        theirs = other_package.CaptioningTransformer(ours.word_to_idx, shapes.input_dim, shapes.wordvec_dim, **sizes)
    else:
        ours = CaptioningRNN(coco_vocab(shapes.vocab_size), shapes.input_dim, shapes.wordvec_dim, shapes.hidden_dim,
                             cell_type=decoder)  # fmt: skip
        theirs = other_package.CaptioningRNN(ours.word_to_idx, shapes.input_dim, shapes.wordvec_dim,
                                             shapes.hidden_dim, cell_type=decoder)  # fmt: skip
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


# --quick: every row at toy sizes, one round: a check that the comparison runs, not a measurement.
QUICK_SHAPES = Shapes(input_dim=16, wordvec_dim=8, hidden_dim=12, vocab_size=40, time_steps=8)


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--against``, ``--rounds``, ``--rows``, ``--decoders``, ``--quick``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="git revision to compare with (e.g. HEAD~1, main)")
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds per row (default: 7)")
    parser.add_argument(
        "--rows", choices=["all", "step", "sample", "metrics"], default="all", help="which rows (default: all)"
    )
    parser.add_argument(
        "--decoders",
        nargs="+",
        choices=[*CELLS, "transformer"],
        default=None,
        help="which decoders (default: every one the other revision has)",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes, one round, no warm-up: a smoke run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Time the rows ``argv`` asks for, this checkout against ``--against``, and print the table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    shapes, rounds = (QUICK_SHAPES, Rounds(1, 0)) if args.quick else (Shapes(), Rounds(rounds=args.rounds))
    device = torch.device("cpu")
    batches, images = ((2, 5), 10) if args.quick else ((25, 512), 1000)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        other = import_revision(args.against, Path(folder))
        has = [*CELLS, *(["transformer"] if hasattr(other, "CaptioningTransformer") else [])]
        missing = sorted(set(args.decoders or []) - set(has))
        if missing:
            parser.error(f"--decoders: {args.against} has no {', '.join(missing)}")
        for cell in (args.decoders or has) if args.rows != "metrics" else []:
            ours, theirs = make_models(other, cell, shapes)
            if args.rows in ("all", "step"):
                for batch in batches:
                    features, captions = make_batch(batch, shapes, device)
                    with torch.no_grad():  # dropout off (the Transformer's): both revisions compute the same loss
                        ours.eval(), theirs.eval()
                        difference = float((ours.loss(features, captions) - theirs.loss(features, captions)).abs())
                    ours.train(), theirs.train()  # the steps are timed as training runs them, dropout on
                    contenders = {"this": training_step(ours, features, captions),
                                  "other": training_step(theirs, features, captions)}  # fmt: skip
                    timings = time_interleaved(contenders, rounds.rounds, rounds.warmup, device)
                    rows.append(_row(f"{cell} training step, batch {batch}", timings, difference))
                    ours, theirs = make_models(other, cell, shapes)  # fresh weights after the steps
            if args.rows in ("all", "sample"):
                features, _ = make_batch(images, shapes, device)
                same = bool(torch.equal(ours.sample(features, 30), theirs.sample(features, 30)))
                contenders = {"this": lambda: ours.sample(features, 30), "other": lambda: theirs.sample(features, 30)}
                timings = time_interleaved(contenders, rounds.rounds, rounds.warmup, device)
                rows.append(_row(f"{cell} greedy sampling, {images} images", timings, 0.0 if same else float("nan")))
        if args.rows in ("all", "metrics"):
            rows += metric_rows(args.against, shapes, rounds, 50 if args.quick else 5000)
    columns = [("row", "row", "s"), ("this_ms", "this ms", ".1f"), ("other_ms", "other ms", ".1f"),
               ("ratio", "other / this", ".3f"), ("range", "per-round range", "s"),
               ("difference", "loss / score difference", ".1e")]  # fmt: skip
    print(f"this checkout against {args.against}, {rounds.rounds} rounds, {torch.get_num_threads()} threads\n")
    print(format_table(rows, columns))
    return 0


def metric_rows(against: str, shapes: Shapes, rounds: Rounds, images: int) -> list[dict]:
    """CIDEr-D rewards of 250 sampled captions (5 for each of 50 images, document frequencies of a corpus of
    ``images`` x 5 references), and BLEU-1..4 and CIDEr-D of a text corpus of ``images`` images x 5 references;
    COCO-like captions of random words. Empty where the other revision has no ``metrics/cider.py``."""
    try:
        theirs = (
            importlib.import_module(f"{OTHER_PACKAGE}.metrics.cider"),
            importlib.import_module(f"{OTHER_PACKAGE}.metrics.coco"),
        )
    except ImportError:
        print(f"{against} has no metrics/cider.py: no metric rows")
        return []
    from caption_torch.metrics import cider, coco

    generator = torch.Generator().manual_seed(0)
    references = coco_like_captions(images * 5, shapes, generator)  # image i's: rows 5i .. 5i + 4
    samples = coco_like_captions(250, shapes, generator)
    reference_image, sample_image = np.arange(images * 5) // 5, np.arange(250) // 5
    skipped = (START_ID, NULL_ID)
    rows = []
    scorers = {}
    for name, module in (("this", cider), ("other", theirs[0])):
        corpus = module.Sentences.from_ids(references, END_ID, skipped)
        reward = module.CiderD(corpus, reference_image, shapes.vocab_size)
        batch_refs, batch_image = module.Sentences.from_ids(references[:250], END_ID, skipped), reference_image[:250]
        candidates = module.Sentences.from_ids(samples, END_ID, skipped)
        scorers[name] = lambda r=reward, c=candidates, b=batch_refs, i=batch_image: r.scores(c, sample_image, b, i)
    difference = float(np.abs(scorers["this"]() - scorers["other"]()).max())
    rows.append(_row("CIDEr-D rewards of 250 samples", time_interleaved(scorers, rounds.rounds, rounds.warmup,
                                                                       torch.device("cpu")), difference))  # fmt: skip
    words = [f"w{i}" for i in range(shapes.vocab_size)]
    texts = [coco.caption_text(row, words) for row in references]
    corpus_references = [texts[5 * i : 5 * i + 5] for i in range(images)]
    corpus_candidates = [coco.caption_text(row, words) for row in coco_like_captions(images, shapes, generator)]
    for title, ours, other in (("BLEU-1..4", coco.bleu_scores, theirs[1].bleu_scores),
                               ("CIDEr-D", coco.cider_d_scores, theirs[1].cider_d_scores)):  # fmt: skip
        contenders = {"this": lambda f=ours: f(corpus_candidates, corpus_references),
                      "other": lambda f=other: f(corpus_candidates, corpus_references)}  # fmt: skip
        this_scores, other_scores = contenders["this"](), contenders["other"]()
        if isinstance(this_scores, dict):
            this_scores, other_scores = list(this_scores.values()), list(other_scores.values())
        difference = float(np.abs(np.asarray(this_scores) - np.asarray(other_scores)).max())
        timings = time_interleaved(contenders, rounds.rounds, rounds.warmup, torch.device("cpu"))
        rows.append(_row(f"{title} of {images} images x 5 references", timings, difference))
    return rows


def _row(name: str, timings, difference: float) -> dict:
    """One table row: medians, their ratio, and the range of the per-round ratios."""
    this, other = timings["this"], timings["other"]
    per_round = sorted(o / t for o, t in zip(other.samples, this.samples))
    return {"row": name, "this_ms": this.median * 1e3, "other_ms": other.median * 1e3,
            "ratio": other.median / this.median, "range": f"{per_round[0]:.2f}-{per_round[-1]:.2f}",
            "difference": difference}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
