"""Caption files people have, read into one form; tokenised and encoded as cs231n's captions.

Three formats, told apart by their content:

* COCO's ``captions_{train,val}2014.json``: ``images`` (``id``, ``file_name``) and
  ``annotations`` (``image_id``, ``caption``); the split is the file's (train2014 or
  val2014 in its name), else none.
* Karpathy's ``dataset_{coco,flickr8k,flickr30k}.json``: ``images`` with ``filename``,
  optional ``filepath``, ``split`` and ``sentences`` (``raw``); ``train`` and ``restval``
  become train, ``val`` and ``test`` stay.
* CSV with the header ``image,caption`` (Flickr8k's ``captions.txt``), no split.

Images without a split get one from a seeded permutation (:func:`assign_splits`).
Tokenisation as cs231n's: lower case, punctuation dropped, split on white space; the
vocabulary is the special tokens (ids 0-3) then the train words seen at least
``min_word_count`` times, most frequent first; captions are cut to ``max_words`` words
and stored ``<START> w1 ... <END> <NULL>...`` with T = max_words + 2.
"""

from __future__ import annotations

import csv
import json
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from caption_torch import vocabulary

SPLITS = ("train", "val", "test")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
HELD_OUT_FRACTION = 0.1  # of the images without a split, each of val and test (at least one image each)
MAX_WORDS = 15
MIN_WORD_COUNT = 5
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


class CaptionFileError(ValueError):
    """A captions file that cannot be read; the message names the file and the line or entry."""


@dataclass
class CaptionedImage:
    """One image of a captions file: where it may be (relative paths, most likely first), its captions, its split."""

    candidates: tuple[str, ...]
    captions: list[str] = field(default_factory=list)
    split: str | None = None

    @property
    def name(self) -> str:
        return self.candidates[0]


def tokenize(text: str) -> list[str]:
    """cs231n's tokenisation: ``"A dog, running."`` -> ``["a", "dog", "running"]``."""
    return text.lower().translate(_DROP_PUNCTUATION).split()


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not tokenize(value):
        raise CaptionFileError(f"{where}: expected a caption with at least one word, found {value!r}")
    return value


def _read_coco(path: Path, data: dict) -> list[CaptionedImage]:
    split = "train" if "train2014" in path.name else "val" if "val2014" in path.name else None
    images: dict = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            found = f"{entry!r:.80}"
            raise CaptionFileError(f"{path}: images[{i}]: expected an object with id and file_name, found {found}")
        folder = next((name for name in ("train2014", "val2014") if name in entry["file_name"]), None)
        candidates = (entry["file_name"],) + ((f"{folder}/{entry['file_name']}",) if folder else ())
        images[entry["id"]] = CaptionedImage(candidates, split=split)
    for i, entry in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise CaptionFileError(f"{where}: expected an object with image_id and caption, found {entry!r:.80}")
        if entry["image_id"] not in images:
            raise CaptionFileError(f"{where}: image_id {entry['image_id']!r} is not in images")
        images[entry["image_id"]].captions.append(_text(entry["caption"], where))
    return list(images.values())


def _read_karpathy(path: Path, data: dict) -> list[CaptionedImage]:
    images = []
    for i, entry in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise CaptionFileError(f"{where}: expected an object with a filename, found {entry!r:.80}")
        split = entry.get("split")
        if split not in KARPATHY_SPLITS:
            raise CaptionFileError(f"{where}: split {split!r} is not one of {sorted(KARPATHY_SPLITS)}")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise CaptionFileError(f"{where}: expected a non-empty list of sentences, found {sentences!r:.80}")
        captions = []
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                raw = " ".join(map(str, sentence["tokens"]))
            captions.append(_text(raw, f"{where}.sentences[{k}]"))
        filepath = entry.get("filepath")
        candidates = ((f"{filepath}/{entry['filename']}",) if filepath else ()) + (entry["filename"],)
        images.append(CaptionedImage(candidates, captions, KARPATHY_SPLITS[split]))
    return images


def _read_csv(path: Path) -> list[CaptionedImage]:
    images: dict[str, CaptionedImage] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None or [cell.strip().lower() for cell in header[:2]] != ["image", "caption"]:
                raise CaptionFileError(f"{path} line 1: expected the header image,caption, found {header!r}")
            for row in reader:
                line = reader.line_num
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2 or not row[0].strip():
                    raise CaptionFileError(f"{path} line {line}: expected image,caption, found {row!r:.80}")
                # An unquoted caption holding commas arrives as several fields: they are one caption.
                caption = _text(",".join(row[1:]), f"{path} line {line}")
                name = row[0].strip()
                images.setdefault(name, CaptionedImage((name,))).captions.append(caption)
    except UnicodeDecodeError as error:
        raise CaptionFileError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise CaptionFileError(f"{path}: not valid CSV ({error})") from None
    return list(images.values())


def read_caption_file(path: Path | str) -> list[CaptionedImage]:
    """The images and captions of one captions file, in the file's order (format told from the content).

    Raises:
        CaptionFileError: naming the file and the line or entry that is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        head = path.read_bytes()[:1].lstrip()
    except OSError as error:
        raise CaptionFileError(f"{path}: cannot be read ({error.strerror})") from None
    if head[:1] not in (b"{", b"["):
        images = _read_csv(path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CaptionFileError(f"{path}: not valid JSON ({error})") from None
        entries = data.get("images") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise CaptionFileError(f"{path}: expected a JSON object with a list 'images' (COCO or Karpathy format)")
        if isinstance(data.get("annotations"), list):
            images = _read_coco(path, data)
        else:
            images = _read_karpathy(path, data)
    if not images:
        raise CaptionFileError(f"{path}: no images with captions")
    return images


def merge(files: Sequence[list[CaptionedImage]]) -> list[CaptionedImage]:
    """Several files' images as one list; an image named twice keeps its first split and all its captions."""
    merged: dict[str, CaptionedImage] = {}
    for images in files:
        for image in images:
            if image.name in merged:
                merged[image.name].captions += image.captions
            else:
                merged[image.name] = CaptionedImage(image.candidates, list(image.captions), image.split)
    return list(merged.values())


def assign_splits(images: list[CaptionedImage], seed: int = 0) -> None:
    """Give every image without a split one, by a seeded permutation: 10% val, 10% test (>= 1 each), the rest train."""
    unsplit = [image for image in images if image.split is None]
    if not unsplit:
        return
    if len(unsplit) < 3:
        raise CaptionFileError(f"{len(unsplit)} images without a split: a train, val and test split need at least 3")
    held_out = max(1, round(HELD_OUT_FRACTION * len(unsplit)))
    order = np.random.default_rng(seed).permutation(len(unsplit))
    for rank, index in enumerate(order):
        unsplit[index].split = "val" if rank < held_out else "test" if rank < 2 * held_out else "train"


def build_vocabulary(train_captions: Sequence[list[str]], min_word_count: int = MIN_WORD_COUNT) -> list[str]:
    """``idx_to_word``: the special tokens, then train words seen >= ``min_word_count`` times, most frequent first."""
    counts = Counter(word for words in train_captions for word in words)
    kept = sorted(
        (word for word, count in counts.items() if count >= min_word_count and word not in vocabulary.SPECIAL_TOKENS),
        key=lambda word: (-counts[word], word),
    )
    return [*vocabulary.SPECIAL_TOKENS, *kept]


def encode(words: Sequence[str], word_to_idx: dict[str, int], max_words: int = MAX_WORDS) -> np.ndarray:
    """(max_words + 2,) int32: ``<START>``, the first ``max_words`` words (unknown: ``<UNK>``), ``<END>``, padding."""
    unk = word_to_idx[vocabulary.UNK]
    ids = [
        word_to_idx[vocabulary.START],
        *(word_to_idx.get(word, unk) for word in words[:max_words]),
        word_to_idx[vocabulary.END],
    ]
    row = np.full(max_words + 2, word_to_idx[vocabulary.NULL], dtype=np.int32)
    row[: len(ids)] = ids
    return row
