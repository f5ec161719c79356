"""Every caption metric of the project in one table: how it is computed, how it is shown, where it is used.

:data:`METRICS` (in the COCO caption evaluation's order) drives ``python -m caption_torch.evaluate``'s
table (:func:`caption_torch.metrics.coco.evaluate_captions`); the entries with a ``log_name`` are also
computed during validation (``training/system.py``) and printed in the trainer's final report.
Adding a metric is one entry here: a function that scores a text corpus and, to follow it during
training, a torchmetrics ``Metric`` that accumulates it over validation batches (and processes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torchmetrics import Metric

from caption_torch.metrics.bleu import CocoBLEUScore, bleu_scores
from caption_torch.metrics.cider import CorpusCiderD, cider_d
from caption_torch.metrics.meteor import meteor
from caption_torch.metrics.rouge import rouge_l

__all__ = ["CaptionMetric", "METRICS", "REWARD_METRIC", "VALIDATION_METRICS", "metric_names"]

# Plain captions: N generated ones, and each image's references.
CorpusScorer = Callable[[Sequence[str], Sequence[Sequence[str]]], dict[str, float]]


@dataclass(frozen=True)
class CaptionMetric:
    """One metric: its name as printed, how to score a corpus, and (optionally) how to follow it in validation.

    ``corpus`` returns a dict holding at least this metric's ``name``; entries that share one
    function (BLEU-1..4) are computed by one call.
    """

    name: str  # as printed in tables and reports: "BLEU-4"
    corpus: CorpusScorer
    higher_is_better: bool = True
    needs_java: bool = False  # runs pycocoevalcap's jar: skipped, with a notice, where java is missing
    log_name: str | None = None  # logged in validation as this ("val_bleu4"); None: not computed there
    validation: Callable[[object], Metric] | None = None  # the accumulating Metric, built for a Captioner
    on_ids: bool = False  # the validation Metric takes (generated ids (B, L), references (B, R, T)), not text


def _one(name: str, score: Callable[[Sequence[str], Sequence[Sequence[str]]], float]) -> CorpusScorer:
    def corpus(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        return {name: score(candidates, references)}

    return corpus


def _bleu(n: int) -> CaptionMetric:
    return CaptionMetric(f"BLEU-{n}", bleu_scores, log_name=f"val_bleu{n}",
                         validation=lambda model: CocoBLEUScore(n_gram=n))  # fmt: skip


def _corpus_cider(model) -> CorpusCiderD:
    return CorpusCiderD(model.vocab_size, model.end_id, (model.start_id, model.null_id))


METRICS: tuple[CaptionMetric, ...] = (
    *(_bleu(n) for n in (1, 2, 3, 4)),
    CaptionMetric("METEOR", _one("METEOR", meteor), needs_java=True),
    CaptionMetric("ROUGE-L", _one("ROUGE-L", rouge_l)),
    CaptionMetric("CIDEr-D", _one("CIDEr-D", cider_d), log_name="val_cider", validation=_corpus_cider, on_ids=True),
)

# Computed on greedy captions of the val split every epoch, in this order.
VALIDATION_METRICS: tuple[CaptionMetric, ...] = tuple(metric for metric in METRICS if metric.log_name)

REWARD_METRIC = "CIDEr-D"  # what self-critical training optimises (its rewards are CIDEr-D's)


def metric_names() -> tuple[str, ...]:
    """The printed names of :data:`METRICS`, in order."""
    return tuple(metric.name for metric in METRICS)
