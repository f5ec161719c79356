"""What the DataModule reads: the :class:`CaptionSource` protocol, and the types it speaks in.

A data format is one class with these methods; the DataModule, ``train.py`` and ``evaluate``
use nothing else of it. Its two implementations: ``cs231n.Cs231nFolder`` (cs231n's
``coco_captioning`` folder) and ``synthetic.source.SyntheticSource`` (the embedded dataset)::

    source.prepare()                      write files if needed (once per node, before anything reads)
    source.vocabulary()                   word_to_idx, idx_to_word
    source.captions(vocab_size)           {split: SplitCaptions}: token ids and each caption's image row
    source.check(splits, word_to_idx)     every split checked against the others: (images per split, D)
    source.feature_file(split)            HDF5 file whose dataset "features" is (N_images, D) or (N_images, M, D)
    source.image_sources(split)           one ImageSource per image row: where the picture comes from
    source.folder                         where its files are (caches of derived data go beside them)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from caption_torch import vocabulary
from caption_torch.functional.checks import check_positive_integer

SPLITS = ("train", "val")


@dataclass(frozen=True)
class SplitCaptions:
    """All captions of one split: (Nc, T) token ids and the image row of each caption."""

    captions: np.ndarray
    image_idxs: np.ndarray


def subsample(captions: np.ndarray, image_idxs: np.ndarray, count: int, seed: int | None):
    """``count`` random captions (without replacement) and their image rows."""
    check_positive_integer("max_train", count)
    if count > captions.shape[0]:
        raise ValueError(f"asked for {count} training captions but the split has only {captions.shape[0]}")
    rng = np.random.default_rng(seed) if seed is not None else np.random
    chosen = rng.choice(captions.shape[0], size=count, replace=False)
    return captions[chosen], image_idxs[chosen]


@dataclass(frozen=True)
class ImageSource:
    """Where one image's picture comes from: a URL (COCO's Flickr images) or a scene to draw (the embedded data).

    Exactly one of ``url`` and ``scene`` is set; callers ask which, never the type of a value.
    """

    url: str | None = None
    scene: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.scene is None):
            raise ValueError(f"an image source is a url or a scene, got url={self.url!r}, scene={self.scene!r}")

    def describe(self) -> str:
        """One line: the URL, or ``scene: {...}``."""
        return self.url if self.url is not None else "scene: " + json.dumps(self.scene, separators=(",", ":"))

    def record(self) -> dict[str, Any]:
        """``{"url": ...}`` or ``{"scene": ...}``: the JSON field that names it."""
        return {"url": self.url} if self.url is not None else {"scene": self.scene}


class CaptionSource(Protocol):
    """A data format the DataModule can read: vocabulary, captions, features and image sources per split."""

    folder: Path  # where its files are; derived files (e.g. CIDEr-D document frequencies) are cached beside them
    named_folder: Path | None  # the folder a user named (--data-dir); None for data generated into a cache
    pca_features: bool  # the PCA-reduced features (True) or the full ones

    def prepare(self) -> None:
        """Write whatever must exist before reading (generated data); called once per node."""

    def vocabulary(self) -> tuple[dict[str, int], vocabulary.IdToWord]:
        """``(word_to_idx, idx_to_word)``."""

    def captions(self, vocab_size: int) -> dict[str, SplitCaptions]:
        """Every split's captions (int64 ids below ``vocab_size``, ``<START> ... <END> <NULL>...``)."""

    def check(self, splits: dict[str, SplitCaptions], word_to_idx: dict[str, int]) -> tuple[dict[str, int], int]:
        """Check everything a run will read, before it trains: ``(image rows per split, feature width D)``."""

    def feature_file(self, split: str) -> Path:
        """The HDF5 file of a split's features: dataset ``features``, (N_images, D) or (N_images, M, D) float."""

    def image_sources(self, split: str) -> list[ImageSource]:
        """Where each image row's picture comes from."""
