"""METEOR 1.5 through pycocoevalcap's own jar (it needs ``java``): it aligns words also through stems and
paraphrase tables that only the jar has, so it is run rather than reimplemented."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from caption_torch.metrics.ngrams import check_corpus

__all__ = ["MetricUnavailable", "meteor", "meteor_unavailable"]


class MetricUnavailable(RuntimeError):
    """A metric that cannot run on this machine (METEOR without java or pycocoevalcap)."""


def meteor_unavailable() -> str | None:
    """Why METEOR cannot run here, in a few words, or None when it can."""
    if shutil.which("java") is None:
        return "java is not on the PATH (e.g. apt-get install default-jre-headless)"
    try:
        import pycocoevalcap.meteor.meteor  # noqa: F401
    except ImportError:
        return "pycocoevalcap is not installed (pip install pycocoevalcap)"
    return None


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 from pycocoevalcap's own jar (its ``Meteor().compute_score`` first output).

    METEOR aligns words also through stems and paraphrase tables that only the jar has,
    so it is run rather than reimplemented. Raises :class:`MetricUnavailable` with the
    reason when java or pycocoevalcap is missing, or the jar fails.
    """
    check_corpus(candidates, references)
    reason = meteor_unavailable()
    if reason is not None:
        raise MetricUnavailable(reason)
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [candidate] for i, candidate in enumerate(candidates)}
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    except (ValueError, OSError) as error:  # the jar died: its answer is an empty line or a broken pipe
        raise MetricUnavailable(f"the METEOR jar failed ({error})") from None
    return float(score)
