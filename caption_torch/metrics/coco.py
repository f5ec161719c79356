"""Caption metrics of the COCO caption evaluation: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

Every metric takes plain captions, words separated by spaces, without ``<START>``,
``<END>`` or ``<NULL>`` (:func:`caption_text` makes them from token ids)::

    candidates = ["a cat on a mat", ...]                           one per image
    references = [["a cat sits on a mat", "the cat on the mat"], ...]  all of each image

Each equals its scorer in pycocoevalcap 1.2 (the coco-caption code) number for number;
``tests/test_metrics.py`` compares them. Each lives in its own module: BLEU in :mod:`.bleu`,
CIDEr-D in :mod:`.cider` (one implementation on word ids; text has its words numbered),
ROUGE-L in :mod:`.rouge`, METEOR (pycocoevalcap's own jar, it needs ``java``) in
:mod:`.meteor`; :mod:`.registry` lists them. This module turns token ids into plain text and
computes the whole table (:func:`evaluate_captions`); the metric functions are importable
from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from caption_torch.metrics.bleu import bleu_scores, bleu_scores_per_image
from caption_torch.metrics.cider import cider_d, cider_d_scores
from caption_torch.metrics.meteor import MetricUnavailable, meteor, meteor_unavailable
from caption_torch.metrics.ngrams import check_corpus
from caption_torch.metrics.registry import METRICS, metric_names
from caption_torch.metrics.rouge import rouge_l, rouge_l_scores
from caption_torch.vocabulary import END, NULL, START

__all__ = [
    "strip_special",
    "caption_text",
    "bleu_scores",
    "bleu_scores_per_image",
    "cider_d_scores",
    "cider_d",
    "rouge_l_scores",
    "rouge_l",
    "meteor",
    "meteor_unavailable",
    "MetricUnavailable",
    "evaluate_captions",
    "scores_per_image",
    "COCO_METRICS",
]

# The order of the COCO caption evaluation's table (the registry's).
COCO_METRICS = metric_names()

# <UNK> is a real (if unhelpful) word of a generated caption, so it is kept.
SKIPPED_TOKENS = frozenset({START, NULL})


# --------------------------------------------------------------------------- #
# From token ids to the plain text the metrics compare
# --------------------------------------------------------------------------- #


def strip_special(tokens_or_string: str | Sequence[str]) -> str:
    """The plain caption: words up to the first ``<END>``, without ``<START>`` / ``<NULL>``.

    Args:
        tokens_or_string: a list of words, or one string of space-separated words
            (for instance cs231n's ``decode_captions`` output ``"<START> a cat <END>"``).

    Returns:
        The remaining words joined by single spaces, e.g. ``"a cat"``.
    """
    words = tokens_or_string.split() if isinstance(tokens_or_string, str) else tokens_or_string
    kept = []
    for word in words:
        if word == END:
            break
        if word not in SKIPPED_TOKENS:
            kept.append(word)
    return " ".join(kept)


def caption_text(ids: torch.Tensor | Sequence[int], idx_to_word: Mapping[int, str] | Sequence[str]) -> str:
    """Turn one row of token ids (T,) into its plain caption, as :func:`strip_special` does.

    ``idx_to_word`` may be any mapping ``{id: word}`` (ids need not be contiguous) or
    cs231n's list of words (position = id). An id it lacks is a ``ValueError`` naming it.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"caption_text takes one caption, a 1-D row of ids; got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    try:
        words = [idx_to_word[int(idx)] for idx in ids]
    except (KeyError, IndexError):
        missing = next(int(idx) for idx in ids if not _has_id(idx_to_word, int(idx)))
        raise ValueError(f"token id {missing} is not in the vocabulary ({len(idx_to_word)} words)") from None
    return strip_special(words)


def _has_id(idx_to_word: Mapping[int, str] | Sequence[str], idx: int) -> bool:
    if isinstance(idx_to_word, Mapping):
        return idx in idx_to_word
    return 0 <= idx < len(idx_to_word)


# --------------------------------------------------------------------------- #
# Everything at once
# --------------------------------------------------------------------------- #


def evaluate_captions(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    with_meteor: bool = True,
    notice: Callable[[str], None] | None = None,
) -> dict[str, float | None]:
    """The COCO table, every metric of :data:`~caption_torch.metrics.registry.METRICS` in its order:
    ``{"BLEU-1": ..., "METEOR": ..., "CIDEr-D": ...}``.

    A metric that needs java (METEOR) is None when not asked for (``with_meteor=False``) or
    when it cannot run; then ``notice`` (if given) gets one line saying why, and the other
    scores are still computed.
    """
    check_corpus(candidates, references)
    computed: dict[object, dict[str, float]] = {}  # per scoring function: BLEU-1..4 come from one call
    scores: dict[str, float | None] = {}
    for metric in METRICS:
        scores[metric.name] = None
        if metric.needs_java and not with_meteor:
            continue
        if metric.corpus not in computed:
            try:
                computed[metric.corpus] = metric.corpus(candidates, references)
            except MetricUnavailable as reason:
                computed[metric.corpus] = {}
                if notice is not None:
                    notice(f"{metric.name} skipped: {reason}")
        scores[metric.name] = computed[metric.corpus].get(metric.name)
    return scores


def scores_per_image(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Per-image CIDEr-D and BLEU-4 (for browsing results): ``{"CIDEr-D": (N,), "BLEU-4": (N,)}``."""
    return {"CIDEr-D": cider_d_scores(candidates, references),
            "BLEU-4": bleu_scores_per_image(candidates, references)[:, 3]}  # fmt: skip
