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

import functools
import sys
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from caption_torch import vocabulary
from caption_torch.data import schema
from caption_torch.data.protocol import ImageSource, SplitCaptions, subsample  # noqa: F401 (subsample: cs231n's name)
from caption_torch.data.schema import SchemaError

SPLITS = ("train", "val")
OPTIONAL_SPLITS = ("test",)  # read when the captions file has it (folders written by caption_torch.prepare)
CAPTIONS_FILE = "coco2014_captions.h5"
VOCAB_FILE = "coco2014_vocab.json"
SPECIAL_TOKENS = vocabulary.SPECIAL_TOKENS
HOW_TO_GET = (
    "Get the real data with cs231n's get_assignment3_data.sh (coco_captioning.zip, ~1 GB), "
    "or leave out --data-dir to use the embedded synthetic dataset."
)


class CocoDataError(SchemaError):
    """A data folder that is missing a file or holds one in an unexpected form."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)


def feature_file(split: str, pca_features: bool = True) -> str:
    """File name of a split's image features: fc7-PCA (512-d) or the full fc7 (4096-d)."""
    return schema.FEATURES.name.format(split=split, suffix="_pca" if pca_features else "")


def urls_file(split: str) -> str:
    return schema.URLS.format(split=split)


def _validator(base_dir: Path | str) -> schema.Validator:
    return schema.Validator(Path(base_dir), HOW_TO_GET)


def _as_coco_error(function):
    """Readers raise CocoDataError (a SchemaError) whatever part of the schema refused the file."""

    @functools.wraps(function)
    def reader(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except CocoDataError:
            raise
        except SchemaError as error:
            raise CocoDataError(str(error)) from None

    return reader


def require_file(path: Path, expected: str) -> Path:
    """The path, or a CocoDataError naming it, what it should hold, and how to get it."""
    return _as_coco_error(schema.Validator(path.parent, HOW_TO_GET).require)(path, expected)


@_as_coco_error
def read_captions(
    base_dir: Path | str, vocab_size: int | None = None, validator: schema.Validator | None = None
) -> dict[str, SplitCaptions]:
    """Read ``coco2014_captions.h5`` through :data:`schema.CAPTIONS` (``*_image_idxs`` or ``*_image_idxes``).

    Args:
        vocab_size: V; caption ids must lie in [0, V).
        validator: the folder's validator, holding the sizes other files fixed (image indices are
            then checked against the feature rows too).

    Returns:
        ``{"train": SplitCaptions, "val": SplitCaptions}``, and ``"test"`` when the file has
        ``test_captions``; captions as int64.
    """
    check = validator or _validator(base_dir)
    if vocab_size is not None:
        check.sizes.setdefault("V", (vocab_size, VOCAB_FILE))
    result = {}
    with check.open_h5(schema.CAPTIONS) as (path, f):
        for split in SPLITS + tuple(split for split in OPTIONAL_SPLITS if f"{split}_captions" in f):
            arrays = []
            for spec in schema.CAPTIONS.arrays:
                key, entry = check.array(path, f, spec, split)
                values = check.read_array(path, key, entry)
                meaning = "the vocabulary" if spec.below == "V" else "the rows of the split's feature file"
                check.check_below(path, key, values, spec, split, meaning)
                arrays.append(values)
            result[split] = SplitCaptions(*arrays)
    return result


def require_folder(base_dir: Path | str) -> Path:
    """The data folder, or a CocoDataError saying it is a file or missing."""
    base_dir = Path(base_dir)
    if base_dir.exists() and not base_dir.is_dir():
        raise CocoDataError(f"{base_dir}: expected a coco_captioning folder, found a file. {HOW_TO_GET}")
    return base_dir


@_as_coco_error
def read_vocab(base_dir: Path | str) -> tuple[dict[str, int], vocabulary.IdToWord]:
    """Read ``coco2014_vocab.json`` through :data:`schema.VOCABULARY`: ``(word_to_idx, idx_to_word)``."""
    path = require_folder(base_dir) / VOCAB_FILE
    expected = "a JSON vocabulary with idx_to_word and word_to_idx"
    vocab = _validator(base_dir).read_json(path, schema.VOCABULARY, expected)
    word_to_idx = schema.check_vocabulary(path, vocab)
    return word_to_idx, vocabulary.index_words(word_to_idx)


@_as_coco_error
def feature_shape(
    base_dir: Path | str, split: str, pca_features: bool = True, validator: schema.Validator | None = None
) -> tuple[int, int]:
    """(num_images, feature_dim) of a split's feature file, checked (kind, shape, storage) without loading it."""
    check = validator or _validator(base_dir)
    with check.open_h5(schema.FEATURES, split, "_pca" if pca_features else "") as (path, f):
        _, features = check.array(path, f, schema.FEATURES.arrays[0], split)
        return tuple(features.shape)


def read_feature_matrix(path: Path | str) -> np.ndarray:
    """The ``features`` dataset of one HDF5 file as float32 (Ni, D), unchecked (see feature_shape)."""
    with h5py.File(path, "r") as f:
        return np.asarray(f["features"], dtype=np.float32)


def read_features(base_dir: Path | str, split: str, pca_features: bool = True) -> np.ndarray:
    """All features of a split as float32 (Ni, D)."""
    feature_shape(base_dir, split, pca_features)  # validates
    return read_feature_matrix(Path(base_dir) / feature_file(split, pca_features))


@_as_coco_error
def read_urls(base_dir: Path | str, split: str, num_images: int | None = None) -> np.ndarray:
    """One URL per image row, as a NumPy string array (each line stripped, as cs231n reads them).

    With ``num_images`` the file must hold exactly that many lines (trailing blank lines
    aside): URLs belong to feature rows by position, so a missing or extra line would
    give every later image the wrong URL.
    """
    check = _validator(base_dir)
    path = check.path(schema.URLS, split)
    lines = check.read_lines(path, "a text file with one image URL per line")
    if num_images is not None and len(lines) != num_images:
        raise SchemaError(path, None, f"{num_images} lines, one URL per {split} image (feature row)",
                          f"{len(lines)} lines")  # fmt: skip
    return np.asarray(lines)


def check_image_idxs(captions: SplitCaptions, num_images: int, split: str, base_dir: Path | str) -> None:
    """Every caption must point at an existing feature row (num_images rows in the split's feature file)."""
    check = _validator(base_dir)
    check.sizes[f"Ni[{split}]"] = (num_images, feature_file(split))
    spec = schema.CAPTIONS.arrays[1]
    _as_coco_error(check.check_below)(check.path(schema.CAPTIONS.name), f"{split}_image_idxs", captions.image_idxs,
                                      spec, split, "the rows of the split's feature file")  # fmt: skip


@_as_coco_error
def image_sources(base_dir: Path | str, split: str, num_images: int) -> list[ImageSource]:
    """Per image row (``num_images`` of them): its URL."""
    return [ImageSource(url=url) for url in read_urls(base_dir, split, num_images).tolist()]


# Tokens that carry no word: a caption made only of these teaches nothing and scores nothing.
NON_WORDS = SPECIAL_TOKENS[:3]  # <NULL>, <START>, <END>


@_as_coco_error
def check_layout(
    base_dir: Path | str, splits: dict[str, SplitCaptions], word_to_idx: dict[str, int], pca_features: bool = True
) -> tuple[dict[str, int], int]:
    """Check a data folder's splits against each other before any training: everything a run will read.

    Through :mod:`schema`: each split's feature file (its rows ``Ni``, one width ``D`` for both
    splits, finite values), every caption pointing at a feature row, each image having a
    URL. Then every caption begins with ``<START>`` and the captions can train (see
    :func:`check_trainable`).

    Returns:
        ``(num_images per split, D)``.
    """
    base_dir = Path(base_dir)
    check = _validator(base_dir)
    num_images = {}
    start = word_to_idx["<START>"]
    for split, captions in splits.items():
        num_images[split], _ = check_features(check, split, pca_features)
        check_image_idxs(captions, num_images[split], split, base_dir)
        # Only the printed samples use the URLs, after training: a bad file must stop the run before it.
        image_sources(base_dir, split, num_images[split])
        not_started = int((captions.captions[:, 0] != start).sum())
        if not_started:
            raise CocoDataError(
                f"{base_dir / CAPTIONS_FILE}: {not_started} {split} captions do not begin with "
                f"<START> (id {start}); every caption must be <START> ... <END> <NULL>..."
            )
    check_trainable(base_dir, splits, word_to_idx)
    return num_images, check.sizes["D"][0]


def check_features(check: schema.Validator, split: str, pca_features: bool = True) -> tuple[int, int]:
    """A split's feature file through :data:`schema.FEATURES`, every value read: ``(Ni, D)``.

    One NaN row would make every loss that reads it, and the val scores, NaN.
    """
    with check.open_h5(schema.FEATURES, split, "_pca" if pca_features else "") as (path, f):
        key, features = check.array(path, f, schema.FEATURES.arrays[0], split)
        check.check_finite(path, key, features)
        return tuple(features.shape)


def check_finite_features(path: Path, rows_per_read: int = 8192) -> None:
    """Every feature of one file must be finite (see :func:`check_features`)."""
    check = schema.Validator(path.parent, HOW_TO_GET)
    with h5py.File(path, "r") as f:
        _as_coco_error(check.check_finite)(path, "features", f["features"], rows_per_read)


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


class Cs231nFolder:
    """cs231n's ``coco_captioning`` folder as a data source (``protocol.CaptionSource``), read by the functions above.

    Args:
        folder: the folder, in the layout this module's docstring shows.
        pca_features: the 512-d fc7-PCA features (True) or the 4096-d fc7 files.
    """

    def __init__(self, folder: Path | str, pca_features: bool = True) -> None:
        self.folder, self.pca_features = Path(folder), pca_features
        self.named_folder: Path | None = self.folder

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, pca_features={self.pca_features})"

    def prepare(self) -> None:
        """Nothing to write: the folder is read as it is."""

    def vocabulary(self) -> tuple[dict[str, int], vocabulary.IdToWord]:
        return read_vocab(self.folder)

    def captions(self, vocab_size: int) -> dict[str, SplitCaptions]:
        return read_captions(self.folder, vocab_size)

    def check(self, splits: dict[str, SplitCaptions], word_to_idx: dict[str, int]) -> tuple[dict[str, int], int]:
        return check_layout(self.folder, splits, word_to_idx, self.pca_features)

    def feature_file(self, split: str) -> Path:
        return self.folder / feature_file(split, self.pca_features)

    def num_images(self, split: str) -> int:
        """Rows of a split's feature file."""
        return feature_shape(self.folder, split, self.pca_features)[0]

    def image_sources(self, split: str) -> list[ImageSource]:
        return image_sources(self.folder, split, self.num_images(split))
