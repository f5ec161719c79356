"""The record a prepared data folder keeps of how its features were made, and of each feature row's image.

``features.json`` (written by ``python -m caption_torch.prepare``)::

    {"format": 1,
     "backbone": {"name": "vgg16", "layer": "fc7", "resize": 256, "crop": 224, "mean": [...], "std": [...]},
     "weights": {"kind": "imagenet" | "file" | "random", "url", "path", "sha256", "seed", ["label"]},
     "pca": {"file": "vgg16_fc7_pca_basis.h5", "dim": 512, "fitted_on": "train", "explained_variance_ratio": 0.8},
     "images_dir": "/abs/path/to/images",
     "images": {"train": ["a.jpg", ...], "val": [...], "test": [...]},     one per feature row, relative to images_dir
     "skipped": {"file": "skipped.tsv", "count": 3},
     "captions": {"files": [...], "min_word_count": 5, "max_words": 15, "seed": 0}}

Folders without it (cs231n's own files, the embedded data) have features whose extractor is unknown.
"""

from __future__ import annotations

from pathlib import Path

from caption_torch.data import schema

RECORD_FILE = "features.json"
FORMAT = 1


class RecordError(schema.SchemaError):
    """A data folder with no usable record of its feature extractor."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)


def read_record(data_dir: Path | str) -> dict | None:
    """The folder's record (its keys and types as ``schema.FEATURES_RECORD``), or None when it has none.

    Raises:
        RecordError: the file is not a record of this format (naming the entry, what was expected and found).
    """
    path = Path(data_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        expected = f"a features record of format {FORMAT}"
        return schema.Validator(path.parent).read_json(path, schema.FEATURES_RECORD, expected)
    except schema.SchemaError as error:
        raise RecordError(str(error)) from None


def image_files(data_dir: Path | str, split: str) -> list[Path] | None:
    """Each feature row's image file of a split, or None when the folder records none."""
    record = read_record(data_dir)
    if record is None or split not in record["images"]:
        return None
    root = Path(record["images_dir"])
    return [root / name for name in record["images"][split]]
