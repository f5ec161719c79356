"""cs231n's ``coco_captioning`` folder, read unchanged, with errors that say what is wrong.

The layout (as ``get_assignment3_data.sh`` unpacks it)::

    coco2014_captions.h5           train_captions (Nc, 17) int, train_image_idxs (Nc,) int,
                                   val_captions, val_image_idxs   (or *_image_idxes)
    coco2014_vocab.json            {"idx_to_word": [...], "word_to_idx": {...}}
    train2014_vgg16_fc7_pca.h5     features (Ni, 512) float32   (val2014_... likewise)
    train2014_vgg16_fc7.h5         features (Ni, 4096) float32  (the unreduced fc7)
    train2014_urls.txt             one Flickr URL per image    (val2014_urls.txt likewise)

``load_coco_data``, ``sample_coco_minibatch`` and ``decode_captions`` behave as
cs231n's ``coco_utils.py``; the DataModule in ``data.py`` streams the same files.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from caption_torch import vocabulary

SPLITS = ("train", "val")
CAPTIONS_FILE = "coco2014_captions.h5"
VOCAB_FILE = "coco2014_vocab.json"
SPECIAL_TOKENS = vocabulary.SPECIAL_TOKENS
HOW_TO_GET = (
    "Get the real data with cs231n's get_assignment3_data.sh (coco_captioning.zip, ~1 GB), "
    "or leave out --data-dir to use the embedded synthetic dataset."
)


class CocoDataError(ValueError):
    """A data folder that is missing a file or holds one in an unexpected form."""


def feature_file(split: str, pca_features: bool = True) -> str:
    """File name of a split's image features: fc7-PCA (512-d) or the full fc7 (4096-d)."""
    return f"{split}2014_vgg16_fc7{'_pca' if pca_features else ''}.h5"


def urls_file(split: str) -> str:
    return f"{split}2014_urls.txt"


def _problem(path: Path, expected: str, found: str) -> CocoDataError:
    return CocoDataError(f"{path}: expected {expected}, found {found}. {HOW_TO_GET}")


def require_file(path: Path, expected: str) -> Path:
    """The path, or a CocoDataError naming it, what it should hold, and how to get it."""
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise _problem(path, expected, found)
    return path


def _open_h5(path: Path, expected: str) -> h5py.File:
    require_file(path, expected)
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise _problem(path, expected, f"a file h5py cannot open ({error})") from None


@dataclass(frozen=True)
class SplitCaptions:
    """All captions of one split: (Nc, T) token ids and the image row of each caption."""

    captions: np.ndarray
    image_idxs: np.ndarray


def read_captions(base_dir: Path | str, vocab_size: int | None = None) -> dict[str, SplitCaptions]:
    """Read ``coco2014_captions.h5``, accepting ``*_image_idxs`` or ``*_image_idxes``.

    Returns:
        ``{"train": SplitCaptions, "val": SplitCaptions}``; captions as int64.
    """
    path = Path(base_dir) / CAPTIONS_FILE
    expected = "an HDF5 file with datasets {train,val}_captions and {train,val}_image_idxs"
    result = {}
    with _open_h5(path, expected) as f:
        for split in SPLITS:
            caption_key = f"{split}_captions"
            idx_key = next((k for k in (f"{split}_image_idxs", f"{split}_image_idxes") if k in f), None)
            missing = ([caption_key] if caption_key not in f else []) + (
                [f"{split}_image_idxs (or {split}_image_idxes)"] if idx_key is None else []
            )
            if missing:
                raise _problem(path, expected, f"datasets {sorted(f.keys())}, missing {', '.join(missing)}")
            captions, image_idxs = np.asarray(f[caption_key]), np.asarray(f[idx_key])
            if captions.ndim != 2 or captions.shape[1] < 2 or not np.issubdtype(captions.dtype, np.integer):
                raise _problem(path, f"{caption_key} of shape (num_captions, T>=2) and integer dtype",
                               f"shape {captions.shape}, dtype {captions.dtype}")  # fmt: skip
            if image_idxs.shape != (captions.shape[0],) or not np.issubdtype(image_idxs.dtype, np.integer):
                raise _problem(path, f"{idx_key} of shape ({captions.shape[0]},) and integer dtype",
                               f"shape {image_idxs.shape}, dtype {image_idxs.dtype}")  # fmt: skip
            if captions.shape[0] == 0:
                raise _problem(path, f"at least one caption in {caption_key}", "an empty split")
            if vocab_size is not None and (captions.min() < 0 or captions.max() >= vocab_size):
                bad = captions.min() if captions.min() < 0 else captions.max()
                raise _problem(path, f"token ids in [0, {vocab_size}) (the vocabulary)", f"id {bad} in {caption_key}")
            result[split] = SplitCaptions(captions.astype(np.int64), image_idxs.astype(np.int64))
    return result


def require_folder(base_dir: Path | str) -> Path:
    """The data folder, or a CocoDataError saying it is a file or missing."""
    base_dir = Path(base_dir)
    if base_dir.exists() and not base_dir.is_dir():
        raise CocoDataError(f"{base_dir}: expected a coco_captioning folder, found a file. {HOW_TO_GET}")
    return base_dir


def read_vocab(base_dir: Path | str) -> tuple[dict[str, int], vocabulary.IdToWord]:
    """Read ``coco2014_vocab.json``: ``(word_to_idx, idx_to_word)``."""
    path = require_file(require_folder(base_dir) / VOCAB_FILE, "a JSON vocabulary with idx_to_word and word_to_idx")
    try:
        vocab = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _problem(path, "valid JSON", f"a parse error ({error})") from None
    except OSError as error:  # unreadable (permissions): the reason, not a traceback
        raise _problem(path, "a readable file", f"{error.strerror}") from None
    if not isinstance(vocab, dict) or not {"idx_to_word", "word_to_idx"} <= vocab.keys():
        found = f"keys {sorted(vocab)}" if isinstance(vocab, dict) else type(vocab).__name__
        raise _problem(path, "keys idx_to_word and word_to_idx", found)
    word_to_idx, idx_to_word = vocab["word_to_idx"], vocab["idx_to_word"]
    missing = [token for token in SPECIAL_TOKENS[:3] if token not in word_to_idx]
    if missing:
        raise _problem(path, f"the special tokens {SPECIAL_TOKENS[:3]} in word_to_idx", f"{missing} missing")
    consistent = len(idx_to_word) == len(word_to_idx) and all(
        isinstance(idx, int) and 0 <= idx < len(idx_to_word) and idx_to_word[idx] == word
        for word, idx in word_to_idx.items()
    )
    if not consistent:
        raise _problem(path, "idx_to_word and word_to_idx describing the same vocabulary", "they disagree")
    word_to_idx = {word: int(idx) for word, idx in word_to_idx.items()}
    return word_to_idx, vocabulary.index_words(word_to_idx)


def feature_shape(base_dir: Path | str, split: str, pca_features: bool = True) -> tuple[int, int]:
    """(num_images, feature_dim) of a split's feature file, checked without loading it."""
    path = Path(base_dir) / feature_file(split, pca_features)
    expected = "an HDF5 file with a float dataset 'features' of shape (num_images, D)"
    with _open_h5(path, expected) as f:
        if "features" not in f:
            raise _problem(path, expected, f"datasets {sorted(f.keys())}")
        features = f["features"]
        if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
            raise _problem(path, expected, f"shape {features.shape}, dtype {features.dtype}")
        return tuple(features.shape)


def read_feature_matrix(path: Path | str) -> np.ndarray:
    """The ``features`` dataset of one HDF5 file as float32 (Ni, D), unchecked (see feature_shape)."""
    with h5py.File(path, "r") as f:
        return np.asarray(f["features"], dtype=np.float32)


def read_features(base_dir: Path | str, split: str, pca_features: bool = True) -> np.ndarray:
    """All features of a split as float32 (Ni, D)."""
    feature_shape(base_dir, split, pca_features)  # validates
    return read_feature_matrix(Path(base_dir) / feature_file(split, pca_features))


def read_urls(base_dir: Path | str, split: str, num_images: int | None = None) -> np.ndarray:
    """One URL per image row, as a NumPy string array (each line stripped, as cs231n reads them).

    With ``num_images`` the file must hold exactly that many lines (trailing blank lines
    aside): URLs belong to feature rows by position, so a missing or extra line would
    give every later image the wrong URL.
    """
    path = require_file(Path(base_dir) / urls_file(split), "a text file with one image URL per line")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if num_images is not None and len(lines) != num_images:
        raise _problem(path, f"{num_images} lines, one URL per {split} image (feature row)", f"{len(lines)} lines")
    return np.asarray([line.strip() for line in lines])


def check_image_idxs(captions: SplitCaptions, num_images: int, split: str, base_dir: Path | str) -> None:
    """Every caption must point at an existing feature row (num_images rows in the split's feature file)."""
    idxs = captions.image_idxs
    if idxs.size and (idxs.min() < 0 or idxs.max() >= num_images):
        bad = idxs.min() if idxs.min() < 0 else idxs.max()
        raise _problem(Path(base_dir) / CAPTIONS_FILE, f"{split}_image_idxs in [0, {num_images}) "
                       "(the rows of the split's feature file)", f"index {bad}")  # fmt: skip


def scenes_file(split: str) -> str:
    """The embedded dataset's extra file: one scene description per image (no such file in COCO)."""
    return f"{split}2014_scenes.json"


def image_sources(base_dir: Path | str, split: str, num_images: int) -> list:
    """Per image row (``num_images`` of them): its scene dict (embedded data, drawable offline) or URL (COCO)."""
    scenes_path = Path(base_dir) / scenes_file(split)
    if not scenes_path.is_file():
        return read_urls(base_dir, split, num_images).tolist()
    try:
        scenes = json.loads(scenes_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoDataError(f"{scenes_path}: expected a JSON list of scenes, found a parse error ({error})") from None
    if not isinstance(scenes, list) or len(scenes) != num_images:
        found = f"{len(scenes)}" if isinstance(scenes, list) else f"a JSON {type(scenes).__name__}"
        raise CocoDataError(f"{scenes_path}: expected {num_images} scenes, one per feature row, found {found}")
    return scenes


# Tokens that carry no word: a caption made only of these teaches nothing and scores nothing.
NON_WORDS = SPECIAL_TOKENS[:3]  # <NULL>, <START>, <END>


def check_layout(
    base_dir: Path | str, splits: dict[str, SplitCaptions], word_to_idx: dict[str, int], pca_features: bool = True
) -> tuple[dict[str, int], int]:
    """Check a data folder's splits against each other before any training: everything a run will read.

    Every caption points at a feature row and begins with ``<START>``; the feature files agree
    on the width D; each image has a URL (or a scene); the features are finite; and the captions
    can train (see :func:`check_trainable`).

    Returns:
        ``(num_images per split, D)``.
    """
    base_dir = Path(base_dir)
    num_images, widths = {}, {}
    start = word_to_idx["<START>"]
    for split, captions in splits.items():
        num_images[split], widths[split] = feature_shape(base_dir, split, pca_features)
        check_image_idxs(captions, num_images[split], split, base_dir)
        # Only the printed samples use the URLs or scenes, after training: a bad file must stop the run before it.
        image_sources(base_dir, split, num_images[split])
        not_started = int((captions.captions[:, 0] != start).sum())
        if not_started:
            raise CocoDataError(
                f"{base_dir / CAPTIONS_FILE}: {not_started} {split} captions do not begin with "
                f"<START> (id {start}); every caption must be <START> ... <END> <NULL>..."
            )
        check_finite_features(base_dir / feature_file(split, pca_features))
    if len(set(widths.values())) > 1:  # one model reads both splits
        raise CocoDataError(
            f"{base_dir}: the feature files disagree on the width D: "
            + ", ".join(f"{feature_file(split, pca_features)} has {width}" for split, width in widths.items())
        )
    check_trainable(base_dir, splits, word_to_idx)
    return num_images, widths["train"]


def check_finite_features(path: Path, rows_per_read: int = 8192) -> None:
    """Every feature must be finite: one NaN row makes every loss that reads it, and the val scores, NaN."""
    with h5py.File(path, "r") as f:
        features = f["features"]
        for begin in range(0, features.shape[0], rows_per_read):
            block = np.asarray(features[begin : begin + rows_per_read])
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                raise CocoDataError(
                    f"{path}: expected finite features, found NaN or inf in row {begin + bad[0]} "
                    f"({len(bad)} rows of the first {begin + len(block)}); fix or drop those images"
                )


def check_trainable(base_dir: Path, splits: dict[str, SplitCaptions], word_to_idx: dict[str, int]) -> None:
    """Captions that can teach and be scored: words in every split, ``<END>`` where captions stop.

    A split whose captions hold no word trains to emit nothing (loss ~0) and scores 0 against
    empty references; one without any ``<END>`` teaches the model never to stop. Some captions
    lacking ``<END>`` (cut at the length limit) is only a warning.
    """
    path = Path(base_dir) / CAPTIONS_FILE
    non_words = np.asarray([word_to_idx[token] for token in NON_WORDS])
    end = word_to_idx["<END>"]
    for split, split_captions in splits.items():
        captions = split_captions.captions
        if not (~np.isin(captions, non_words)).any(axis=1).any():
            raise CocoDataError(
                f"{path}: no {split} caption holds a word (only <START>, <END>, <NULL>): nothing to "
                + ("learn" if split == "train" else "score the captions against")
            )
        ended = (captions == end).any(axis=1)
        if not ended.any():
            raise CocoDataError(
                f"{path}: no {split} caption holds <END> (id {end}): a model trained on them never stops; "
                "every caption must be <START> ... <END> <NULL>..."
            )
        if not ended.all():
            print(f"warning: {path}: {int((~ended).sum())} of {len(ended)} {split} captions have no <END>",
                  file=sys.stderr)  # fmt: skip


def load_coco_data(
    base_dir: Path | str,
    max_train: int | None = None,
    pca_features: bool = True,
    seed: int | None = None,
) -> dict:
    """Everything in a data folder, as cs231n's ``load_coco_data``.

    Args:
        base_dir: the ``coco_captioning`` folder (or one in the same layout).
        max_train: keep only this many random training captions.
        pca_features: 512-d fc7-PCA features (True) or the 4096-d fc7 (False).
        seed: seed of the ``max_train`` subsampling (NumPy's global generator if None, as cs231n).

    Returns:
        dict with ``train_captions`` (Nc, 17), ``train_image_idxs`` (Nc,), ``train_features``
        (Ni, D) float32, ``train_urls`` (Ni,), the same four for ``val``, ``word_to_idx`` and
        ``idx_to_word``.
    """
    word_to_idx, idx_to_word = read_vocab(base_dir)
    data: dict = {"word_to_idx": word_to_idx, "idx_to_word": idx_to_word}
    for split, captions in read_captions(base_dir, len(idx_to_word)).items():
        features = read_features(base_dir, split, pca_features)
        check_image_idxs(captions, features.shape[0], split, base_dir)
        data[f"{split}_captions"] = captions.captions
        data[f"{split}_image_idxs"] = captions.image_idxs
        data[f"{split}_features"] = features
        data[f"{split}_urls"] = read_urls(base_dir, split, features.shape[0])
    if max_train is not None:
        data["train_captions"], data["train_image_idxs"] = subsample(
            data["train_captions"], data["train_image_idxs"], max_train, seed
        )
    return data


def subsample(captions: np.ndarray, image_idxs: np.ndarray, count: int, seed: int | None):
    """``count`` random captions (without replacement) and their image rows."""
    if count <= 0:
        raise ValueError(f"max_train must be positive, got {count}")
    if count > captions.shape[0]:
        raise ValueError(f"asked for {count} training captions but the split has only {captions.shape[0]}")
    rng = np.random.default_rng(seed) if seed is not None else np.random
    chosen = rng.choice(captions.shape[0], size=count, replace=False)
    return captions[chosen], image_idxs[chosen]


def sample_coco_minibatch(data: dict, batch_size: int = 100, split: str = "train", seed: int | None = None):
    """Random captions of a split with their features and URLs, as cs231n.

    Returns:
        ``(captions (B, T), image_features (B, D), urls (B,))``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng(seed) if seed is not None else np.random
    chosen = rng.choice(data[f"{split}_captions"].shape[0], batch_size)
    image_idxs = data[f"{split}_image_idxs"][chosen]
    return data[f"{split}_captions"][chosen], data[f"{split}_features"][image_idxs], data[f"{split}_urls"][image_idxs]


def decode_captions(captions: Sequence | np.ndarray, idx_to_word: Sequence[str]) -> str | list[str]:
    """Token ids to text, as cs231n: ``<NULL>`` dropped, ``<START>``/``<END>`` kept, stop at ``<END>``.

    Args:
        captions: (T,) one caption, or (N, T) several (NumPy array, tensor or nested lists).

    Returns:
        One string for a single caption, else a list of N strings.
    """
    array = np.asarray(captions.cpu() if hasattr(captions, "cpu") else captions)
    rows = array[None] if array.ndim == 1 else array
    decoded = []
    for row in rows:
        words = []
        for idx in row:
            word = idx_to_word[int(idx)]
            if word != "<NULL>":
                words.append(word)
            if word == "<END>":
                break
        decoded.append(" ".join(words))
    return decoded[0] if array.ndim == 1 else decoded
