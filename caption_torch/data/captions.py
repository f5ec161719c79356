"""Caption files people have, read into one form; tokenised and encoded as cs231n's captions.

Three formats, told apart by their content:

* COCO's ``captions_{train,val}2014.json``: ``images`` (``id``, ``file_name``) and
  ``annotations`` (``image_id``, ``caption``); the split is the file's (train2014 or
  val2014 in its name), else none.
* Karpathy's ``dataset_{coco,flickr8k,flickr30k}.json``: ``images`` with ``filename``,
  optional ``filepath``, ``split`` and ``sentences`` (``raw``); ``train`` and ``restval``
  become train, ``val`` and ``test`` stay.
* CSV with the header ``image,caption`` (Flickr8k's ``captions.txt``), no split.

Each format's keys, types and lines are described in :mod:`caption_torch.data.schema`
(``COCO_CAPTIONS``, ``KARPATHY_CAPTIONS``, ``CAPTIONS_CSV``) and read through its Validator.

Images without a split get one from a seeded permutation (:func:`assign_splits`).
Tokenisation as cs231n's: lower case, punctuation dropped, split on white space; the
vocabulary is the special tokens (ids 0-3) then the train words seen at least
``min_word_count`` times, most frequent first; captions are cut to ``max_words`` words
and stored ``<START> w1 ... <END> <NULL>...`` with T = max_words + 2.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from caption_torch import vocabulary
from caption_torch.data import schema
from caption_torch.data.schema import SchemaError

SPLITS = ("train", "val", "test")
KARPATHY_SPLITS = schema.KARPATHY_SPLITS
HELD_OUT_FRACTION = 0.1  # of the images without a split, each of val and test (at least one image each)
MAX_WORDS = 15
MIN_WORD_COUNT = 5


class CaptionFileError(SchemaError):
    """A captions file that cannot be read; the message names the file, the line or entry, expected and found."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)


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
    return text.lower().translate(schema.DROP_PUNCTUATION).split()


def _read_coco(path: Path, data: dict) -> list[CaptionedImage]:
    split = "train" if "train2014" in path.name else "val" if "val2014" in path.name else None
    images: dict = {}
    first: dict = {}  # id -> index of the entry that has it
    for i, entry in enumerate(data["images"]):
        earlier = first.setdefault(entry["id"], i)
        if earlier != i:  # which file would its annotations caption?
            raise SchemaError(path, f"images[{i}].id", "an id no other entry of images has",
                              f"{schema.json_name(entry['id'])}, the id of images[{earlier}] too")  # fmt: skip
        folder = next((name for name in ("train2014", "val2014") if name in entry["file_name"]), None)
        candidates = (entry["file_name"],) + ((f"{folder}/{entry['file_name']}",) if folder else ())
        images[entry["id"]] = CaptionedImage(candidates, split=split)
    for i, entry in enumerate(data["annotations"]):
        if entry["image_id"] not in images:
            raise SchemaError(path, f"annotations[{i}].image_id", "the id of an entry of images",
                              schema.json_name(entry["image_id"]))  # fmt: skip
        images[entry["image_id"]].captions.append(entry["caption"])
    return list(images.values())


def _read_karpathy(path: Path, data: dict) -> list[CaptionedImage]:
    images = []
    for i, entry in enumerate(data["images"]):
        captions = []
        for k, sentence in enumerate(entry["sentences"]):
            raw = sentence["raw"] if "raw" in sentence else " ".join(sentence["tokens"])
            if not schema.has_word(raw):
                raise SchemaError(path, f"images[{i}].sentences[{k}].tokens", schema.CAPTION.name,
                                  schema.json_name(sentence["tokens"]))  # fmt: skip
            captions.append(raw)
        filepath = entry.get("filepath")
        candidates = ((f"{filepath}/{entry['filename']}",) if filepath else ()) + (entry["filename"],)
        images.append(CaptionedImage(candidates, captions, KARPATHY_SPLITS[entry["split"]]))
    return images


def _read_csv(path: Path, text: str, validator: schema.Validator) -> list[CaptionedImage]:
    images: dict[str, CaptionedImage] = {}
    for _, (name, caption) in validator.parse_csv(path, text, schema.CAPTIONS_CSV):
        images.setdefault(name, CaptionedImage((name,))).captions.append(caption)
    return list(images.values())


def read_caption_file(path: Path | str) -> list[CaptionedImage]:
    """The images and captions of one captions file, in the file's order (format told from the content).

    Images the file lists without a caption (COCO's ``images`` entries no annotation names) are left out.

    Raises:
        CaptionFileError: naming the file, the line or entry that is wrong, what was expected and what was found.
    """
    path = Path(path)
    validator = schema.Validator(path.parent)
    expected = "a captions file: COCO or Karpathy JSON, or CSV image,caption"
    try:
        text = validator.read_text(path, expected).removeprefix("\ufeff")
        if text.lstrip()[:1] not in ("{", "["):
            images = _read_csv(path, text, validator)
        else:
            data = validator.parse_json(path, text, schema.JsonType("any JSON"), expected)
            if isinstance(data, dict) and "annotations" in data:
                images = _read_coco(path, validator.check_json(path, data, schema.COCO_CAPTIONS, expected))
            else:
                images = _read_karpathy(path, validator.check_json(path, data, schema.KARPATHY_CAPTIONS, expected))
        images = [image for image in images if image.captions]
        if not images:
            raise SchemaError(path, None, "at least one image with a caption", "none")
    except CaptionFileError:
        raise
    except SchemaError as error:
        raise CaptionFileError(str(error)) from None
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
