"""Every file of a data folder, described once, and the one validator that reads files through the descriptions.

A data folder in cs231n's layout holds HDF5 files, a JSON vocabulary and text files; the
embedded dataset adds a JSON list of scenes per split. Each is described below as data:

* an HDF5 entry (:class:`Array`): a dataset (not a group), of an integer or float dtype,
  with one named size per dimension. A size name met twice must have one value: that is how
  the captions and their image indices agree on ``Nc``, the feature files of both splits on
  ``D``, the URL lines on a split's ``Ni``. Its values may be bounded by another size (caption
  ids below the vocabulary size ``V``, image indices below the split's ``Ni``) or required finite;
* JSON (:class:`JsonType` trees): the type of every key and value;
* text (:data:`URLS`): UTF-8, one line per image.

Files a user brings are described the same way: the caption files ``prepare`` reads (COCO's
and Karpathy's JSON as :class:`JsonType` trees, the ``image,caption`` CSV as a :class:`CsvFile`)
and the ``features.json`` record a prepared folder keeps (:data:`FEATURES_RECORD`).

:class:`Validator` reads files through these descriptions and remembers the sizes they fix,
so the second file that disagrees is named with the first. Every problem is a
:class:`SchemaError` naming the file, the entry, what was expected and what was found.
"""

from __future__ import annotations

import csv
import io
import json
import math
import string
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import h5py
import numpy as np

from caption_torch import vocabulary


class SchemaError(ValueError):
    """A file that does not match its description: ``{file}: {entry}: expected ..., found ...``."""

    def __init__(self, path: Path | str, entry: str | None, expected: str, found: str, hint: str = "") -> None:
        where = f"{path}: {entry}" if entry else f"{path}"
        super().__init__(f"{where}: expected {expected}, found {found}" + (f". {hint}" if hint else ""))


def available_host_memory() -> int | None:
    """Bytes of RAM the kernel says a new allocation can get (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def human_bytes(count: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


# --- HDF5 entries -------------------------------------------------------------------------------------------------

KIND_NAMES = {"iu": "integer", "f": "float"}
# What each size is, for messages.
SIZE_NAMES = {"Nc": "the number of captions ", "T": "the caption length ", "Ni": "the number of images ",
              "D": "the feature width ", "V": "the vocabulary size "}  # fmt: skip


@dataclass(frozen=True)
class Array:
    """One HDF5 dataset.

    Attributes:
        names: the accepted spellings of its key (``{split}`` is replaced), the first one preferred.
        kinds: NumPy dtype kinds accepted: ``"iu"`` integers, ``"f"`` floats.
        dims: one size name per dimension (``{split}`` replaced); equal names must have equal sizes.
        at_least: the smallest size of each dimension.
        below: the size name every value must lie below (values from 0), or None.
        finite: every value must be finite (no NaN, no inf).
    """

    names: tuple[str, ...]
    kinds: str
    dims: tuple[str, ...]
    at_least: tuple[int, ...]
    below: str | None = None
    finite: bool = False

    def describe(self, split: str) -> str:
        """``a float dataset 'features' of shape (Ni, D)``: a size's name without its split."""
        shape = ", ".join(d.split("[")[0] + (f">={n}" if n > 1 else "") for d, n in zip(self.dims, self.at_least))
        name = self.names[0].format(split=split)
        kind = KIND_NAMES[self.kinds]
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} dataset {name!r} of shape ({shape})"


@dataclass(frozen=True)
class H5File:
    """One HDF5 file: its name (``{split}`` and ``{suffix}`` replaced) and the datasets it must hold."""

    name: str
    arrays: tuple[Array, ...]


CAPTIONS = H5File(
    "coco2014_captions.h5",
    (
        # Token ids of every caption: <START> ... <END> <NULL>...; V is the vocabulary's size.
        Array(("{split}_captions",), "iu", ("Nc[{split}]", "T[{split}]"), (1, 2), below="V"),
        # The feature row of each caption's image (cs231n's files spell it both ways).
        Array(("{split}_image_idxs", "{split}_image_idxes"), "iu", ("Nc[{split}]",), (1,), below="Ni[{split}]"),
    ),
)
# The 512-d fc7-PCA features (suffix "_pca") or the 4096-d fc7; one width D for both splits.
FEATURES = H5File("{split}2014_vgg16_fc7{suffix}.h5", (Array(("features",), "f", ("Ni[{split}]", "D"), (1, 1),
                                                            finite=True),))  # fmt: skip


# --- JSON ---------------------------------------------------------------------------------------------------------


def json_name(value: Any) -> str:
    """What a JSON value is, for a message: ``a list of 3``, ``the number 2.5``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
        return shown if is_text(value) else f"{shown}, holding a lone surrogate (not Unicode text)"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:6]}" + ("..." if len(value) > 6 else "")
    return type(value).__name__


@dataclass(frozen=True)
class JsonType:
    """A JSON value's type: ``name`` says it in messages; ``check(value, where)`` raises a ``_Mismatch``."""

    name: str
    test: Callable[[Any], bool] = lambda value: True
    items: JsonType | None = None  # a list's items, or an object's values (``keys`` tests its keys)
    keys: JsonType | None = None
    fields: Mapping[str, JsonType] | None = None  # an object with these keys (extra keys allowed)
    optional: Mapping[str, JsonType] | None = None  # keys an object may hold, of these types when it does
    min_items: int = 0

    def check(self, value: Any, where: str) -> None:
        if not self.test(value):
            raise _Mismatch(where, self.name, json_name(value))
        if self.fields is not None:
            for key, kind in self.fields.items():
                if key not in value:
                    raise _Mismatch(where, f"the key {key!r} ({kind.name})", json_name(value))
                kind.check(value[key], f"{where}.{key}" if where else key)
        for key, kind in (self.optional or {}).items():
            if key in value:
                kind.check(value[key], f"{where}.{key}" if where else key)
        if isinstance(value, (list, dict)) and len(value) < self.min_items:
            raise _Mismatch(where, f"{self.name}, at least {self.min_items}", json_name(value))
        if self.items is not None:
            entries = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in entries:
                if self.keys is not None:
                    self.keys.check(key, f"{where} key {key!r}")
                self.items.check(item, f"{where}[{key!r}]")


def one_of(names) -> JsonType:
    """A string among ``names``."""
    return JsonType(f"one of {sorted(names)}", lambda v: isinstance(v, str) and v in names)


def object_of(name: str, fields: Mapping[str, JsonType], optional: Mapping[str, JsonType] | None = None) -> JsonType:
    """An object with the keys ``fields`` (and maybe ``optional``), each of its type."""
    return JsonType(name, lambda v: isinstance(v, dict), fields=fields, optional=optional)


def list_of(name: str, items: JsonType, min_items: int = 0) -> JsonType:
    return JsonType(name, lambda v: isinstance(v, list), items=items, min_items=min_items)


class _Mismatch(Exception):
    def __init__(self, where: str, expected: str, found: str) -> None:
        super().__init__(where)
        self.where, self.expected, self.found = where, expected, found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_text(value: Any) -> bool:
    """Whether ``value`` is a string that UTF-8 can encode: JSON's ``"\\ud800"`` escapes decode to lone surrogates,
    which no file name, file or terminal can hold."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


STRING = JsonType("a string", is_text)
WORD_ID = JsonType("an integer id >= 0", lambda v: _is_int(v) and v >= 0)
ID_KEY = JsonType("a key that is an integer id", lambda v: isinstance(v, str) and v.isascii() and v.isdigit())
VOCABULARY = JsonType(
    "an object with idx_to_word and word_to_idx",
    lambda v: isinstance(v, dict),
    fields={
        "word_to_idx": JsonType("an object of word: id", lambda v: isinstance(v, dict), items=WORD_ID, min_items=1),
        # A list indexed by id (null where the ids have a gap), or an object of "id": word.
        "idx_to_word": JsonType(
            "a list of words indexed by id, or an object of id: word",
            lambda v: (
                isinstance(v, (list, dict))
                and all(w is None or isinstance(w, str) for w in (v.values() if isinstance(v, dict) else v))
            ),
        ),
    },
)


def scene_types() -> JsonType:
    """One embedded-dataset scene (format: ``caption_torch.data.synthetic.scenes``), as drawing reads it."""
    from caption_torch.data.synthetic.scenes import COLOURS, RELATIONS, SETTINGS, SHAPES, SIZE_RADIUS

    position = JsonType(
        "an [x, y] pair of numbers in [0, 1]",
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(x) and 0 <= x <= 1 for x in v),
    )
    thing = JsonType(
        "an object with noun, shape, colour, size, count and positions",
        lambda v: isinstance(v, dict) and _is_int(v.get("count")) and isinstance(v.get("positions"), list)
        and len(v["positions"]) == v["count"] >= 1,
        fields={"noun": STRING, "shape": one_of(SHAPES), "colour": one_of(COLOURS), "size": one_of(SIZE_RADIUS),
                "positions": JsonType("a list of positions", lambda v: isinstance(v, list), items=position)},
    )  # fmt: skip
    return JsonType(
        "a scene object",
        lambda v: isinstance(v, dict),
        fields={
            "setting": one_of(SETTINGS),
            "relation": JsonType(f"null or one of {list(RELATIONS)}", lambda v: v is None or v in RELATIONS),
            "objects": JsonType("a list of objects", lambda v: isinstance(v, list), items=thing, min_items=1),
        },
    )


# --- caption files (read by caption_torch.data.captions) ----------------------------------------------------------

DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)  # cs231n's tokenisation drops it


def has_word(text: str) -> bool:
    """Whether a caption keeps a word once tokenised as cs231n does (punctuation dropped, split on white space)."""
    return bool(text.translate(DROP_PUNCTUATION).split())


CAPTION = JsonType("a caption with at least one word", lambda v: is_text(v) and has_word(v))
# An image's name, relative to the images folder: a path cannot hold NUL.
FILE_NAME = JsonType("a file name", lambda v: is_text(v) and v.strip() != "" and "\0" not in v)
# COCO's ids are integers; strings are taken too, as long as images and annotations agree.
IMAGE_ID = JsonType("an integer or string id", lambda v: _is_int(v) or isinstance(v, str))
# COCO's captions_{train,val}2014.json: each annotation's image_id is the id of an entry of images.
COCO_CAPTIONS = object_of(
    "a COCO captions object with images and annotations",
    {
        "images": list_of("a list of images", object_of("an object with id and file_name",
                                                         {"id": IMAGE_ID, "file_name": FILE_NAME}), min_items=1),
        "annotations": list_of("a list of annotations", object_of("an object with image_id and caption",
                                                                   {"image_id": IMAGE_ID, "caption": CAPTION})),
    },
)  # fmt: skip
# Karpathy's splits and the split each becomes: restval is more training data.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
# A Karpathy sentence: its raw text, or (without raw) its tokens.
SENTENCE = JsonType(
    "an object with raw (a caption) or tokens (a list of words)",
    lambda v: isinstance(v, dict) and ("raw" in v or "tokens" in v),
    optional={"raw": CAPTION, "tokens": list_of("a list of words", STRING, min_items=1)},
)
# Karpathy's dataset_{coco,flickr8k,flickr30k}.json: filepath (optional) is the folder of filename.
KARPATHY_CAPTIONS = object_of(
    "a Karpathy dataset object with images",
    {
        "images": list_of(
            "a list of images",
            object_of(
                "an object with filename, split and sentences",
                {"filename": FILE_NAME, "split": one_of(KARPATHY_SPLITS),
                 "sentences": list_of("a non-empty list of sentences", SENTENCE, min_items=1)},
                {"filepath": STRING},
            ),
            min_items=1,
        )
    },
)  # fmt: skip


@dataclass(frozen=True)
class CsvFile:
    """A UTF-8 CSV file (a byte-order mark allowed): a header line, then one row per line.

    Attributes:
        header: the cells of the header line (compared stripped, in lower case; no further column).
        columns: each row's cells, described for messages; the last one takes any further cells
            (an unquoted caption holding commas arrives as several cells).
        cells: a test of each column's text (stripped).
    """

    header: tuple[str, ...]
    columns: tuple[str, ...]
    cells: tuple[Callable[[str], bool], ...]


# Flickr8k's captions.txt: one caption per line, an image named on as many lines as it has captions.
CAPTIONS_CSV = CsvFile(("image", "caption"), ("an image name", "a caption with at least one word"),
                       (lambda cell: cell != "" and "\0" not in cell, has_word))  # fmt: skip


# --- features.json (read by caption_torch.features.record) ------------------------------------------------------

_NULL_OR_STRING = JsonType("null or a string", lambda v: v is None or isinstance(v, str))
FEATURES_RECORD = object_of(
    "a features record of format 1",
    {
        "format": JsonType("the format 1", lambda v: _is_int(v) and v == 1),
        "weights": object_of(
            "an object with kind, path, sha256 and seed",
            {"kind": one_of(("imagenet", "file", "random"))},
            {"path": _NULL_OR_STRING, "sha256": _NULL_OR_STRING,
             "seed": JsonType("null or an integer", lambda v: v is None or _is_int(v))},
        ),
        "pca": object_of("an object with file and dim", {"file": FILE_NAME, "dim": JsonType(
            "an integer >= 1", lambda v: _is_int(v) and v >= 1)}),
        "images_dir": FILE_NAME,
        "images": JsonType("an object of split: list of image files", lambda v: isinstance(v, dict),
                           keys=one_of(("train", "val", "test")), items=list_of("a list of image files", FILE_NAME)),
    },
)  # fmt: skip


# --- text ---------------------------------------------------------------------------------------------------------

URLS = "{split}2014_urls.txt"  # UTF-8 text, one image URL per line: line i is feature row i's image
SCENES = "{split}2014_scenes.json"  # the embedded dataset's: a JSON list of one scene per feature row


# --- the validator ------------------------------------------------------------------------------------------------


@dataclass
class Validator:
    """Reads the files of one folder through their descriptions and keeps the sizes they fix.

    Args:
        folder: the data folder.
        hint: appended to a missing file's message (how to get the data).
    """

    folder: Path
    hint: str = ""
    sizes: dict[str, tuple[int, str]] = field(default_factory=dict)  # size name -> (value, "file: entry" fixing it)

    def path(self, template: str, split: str = "", suffix: str = "") -> Path:
        return self.folder / template.format(split=split, suffix=suffix)

    def require(self, path: Path, expected: str) -> Path:
        if not path.is_file():
            raise SchemaError(path, None, expected, "a folder" if path.is_dir() else "no such file", self.hint)
        return path

    def bind(self, name: str, size: int, path: Path, entry: str) -> None:
        """Record that ``name`` is ``size``, or refuse the second file or entry that disagrees."""
        where = f"{path.name}: {entry}"
        if name in self.sizes and self.sizes[name][0] != size:
            known, origin = self.sizes[name]
            meaning = SIZE_NAMES.get(name.split("[")[0], "")
            raise SchemaError(path, entry, f"{meaning}{name} = {known} (as in {origin})", f"{size}")
        self.sizes.setdefault(name, (size, where))

    # HDF5

    @contextmanager
    def open_h5(self, file: H5File, split: str = "", suffix: str = "") -> Iterator[tuple[Path, h5py.File]]:
        """``(path, open file)``; h5py's own errors while it is read (a torn or foreign file) become SchemaErrors."""
        path = self.require(self.path(file.name, split, suffix), f"an HDF5 file with {_entries(file, split)}")
        try:
            f = h5py.File(path, "r")
        except Exception as error:  # h5py raises OSError and others for foreign or torn files
            raise SchemaError(path, None, "an HDF5 file", f"a file h5py cannot open ({_short(error)})") from None
        try:
            with f:
                yield path, f
        except SchemaError:
            raise
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as error:
            raise SchemaError(path, None, "a readable HDF5 file", f"a read error ({_short(error)})") from None

    def array(self, path: Path, f: h5py.File, spec: Array, split: str = "") -> tuple[str, h5py.Dataset]:
        """The dataset ``spec`` describes in ``f``: its key and handle, its kind, shape and storage checked."""
        names = [name.format(split=split) for name in spec.names]
        key = next((name for name in names if _member(f, name)), None)
        if key is None:
            found = f"datasets {sorted(f.keys())}, missing {names[0]}" + (f" (or {names[1]})" if len(names) > 1 else "")
            raise SchemaError(path, None, spec.describe(split), found, self.hint)
        entry = f[key]
        if not isinstance(entry, h5py.Dataset):
            raise SchemaError(path, key, spec.describe(split), f"an HDF5 {type(entry).__name__.lower()}, not a dataset")
        if entry.dtype.kind not in spec.kinds:
            raise SchemaError(path, key, spec.describe(split), f"dtype {entry.dtype}")
        if entry.ndim != len(spec.dims):
            raise SchemaError(path, key, spec.describe(split), f"shape {entry.shape}, dtype {entry.dtype}")
        for dim, (name, least) in enumerate(zip(spec.dims, spec.at_least)):
            size = entry.shape[dim]
            if size < least:
                what = "an empty split" if size == 0 else f"{size}"
                raise SchemaError(path, key, f"{spec.describe(split)}, {name.split('[')[0]} >= {least}",
                                  f"shape {entry.shape}: {what}")  # fmt: skip
            self.bind(name.format(split=split), size, path, key)
        unwritten = _unwritten(entry)
        if unwritten:
            raise SchemaError(path, key, "a dataset whose every value is stored", unwritten)
        return key, entry

    def read_array(self, path: Path, key: str, entry: h5py.Dataset, dtype=np.int64) -> np.ndarray:
        """The whole dataset in memory as ``dtype``, refused first if it cannot fit."""
        needed = entry.size * (np.dtype(dtype).itemsize + entry.dtype.itemsize)
        available = available_host_memory()
        if available is not None and needed > available:
            raise SchemaError(path, key, f"a dataset that fits in memory ({human_bytes(available)} available)",
                              f"shape {entry.shape}, {human_bytes(needed)} to read")  # fmt: skip
        return np.asarray(entry).astype(dtype, copy=False)

    def check_below(self, path: Path, key: str, values: np.ndarray, spec: Array, split: str, meaning: str) -> None:
        """Every value in ``[0, size)`` where ``spec.below`` names the size; ``meaning`` says what the size is."""
        name = spec.below.format(split=split)
        if name not in self.sizes or values.size == 0:
            return
        high = self.sizes[name][0]
        low_value, high_value = values.min(), values.max()
        if low_value < 0 or high_value >= high:
            bad = low_value if low_value < 0 else high_value
            found = f"id {bad} in {key}" if spec.below == "V" else f"index {bad}"
            raise SchemaError(path, None, f"{key} in [0, {high}) ({meaning})", found)

    def check_finite(self, path: Path, key: str, entry: h5py.Dataset, rows_per_read: int = 8192) -> None:
        """Every value finite, read a block of rows at a time (the file may be larger than memory)."""
        for begin in range(0, entry.shape[0], rows_per_read):
            block = np.asarray(entry[begin : begin + rows_per_read])
            finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                raise SchemaError(path, key, "finite features",
                                  f"NaN or inf in row {begin + bad[0]} ({len(bad)} rows of the first "
                                  f"{begin + len(block)}); fix or drop those images")  # fmt: skip

    # JSON and text

    def read_text(self, path: Path, expected: str) -> str:
        self.require(path, expected)
        try:
            data = path.read_bytes()
        except OSError as error:  # unreadable (permissions): the reason, not a traceback
            raise SchemaError(path, None, "a readable file", f"{error.strerror or error}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SchemaError(path, None, f"UTF-8 text ({expected})",
                              f"a byte that is not UTF-8 at offset {error.start}") from None  # fmt: skip

    def read_json(self, path: Path, kind: JsonType, expected: str) -> Any:
        """``path`` parsed as JSON and checked against ``kind``."""
        return self.parse_json(path, self.read_text(path, expected), kind, expected)

    def parse_json(self, path: Path, text: str, kind: JsonType, expected: str) -> Any:
        """``text`` (read from ``path``) parsed as JSON and checked against ``kind``."""
        try:
            value = json.loads(text)
        except RecursionError:
            raise SchemaError(path, None, f"valid JSON ({expected})", "nesting too deep to parse") from None
        except ValueError as error:  # JSONDecodeError, and integers too long to convert
            raise SchemaError(path, None, f"valid JSON ({expected})", f"a parse error ({_short(error)})") from None
        return self.check_json(path, value, kind, expected)

    def check_json(self, path: Path, value: Any, kind: JsonType, expected: str) -> Any:
        """``value`` (parsed from ``path``) checked against ``kind``."""
        try:
            kind.check(value, "")
        except _Mismatch as mismatch:
            raise SchemaError(path, mismatch.where or None, mismatch.expected, mismatch.found) from None
        except RecursionError:
            raise SchemaError(path, None, expected, "nesting too deep to check") from None
        return value

    def parse_csv(self, path: Path, text: str, spec: CsvFile) -> Iterator[tuple[int, list[str]]]:
        """``(line number, cells)`` of each non-blank row of ``text`` (read from ``path``) after the header."""
        expected_header = ",".join(spec.header)
        # strict: a quote left open is an error, not a caption running to the end of the file.
        reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
        read = 0  # the lines of the records read whole: a broken record begins on the next one
        try:
            header = next(reader, None)
            if header is None:
                raise SchemaError(path, "line 1", f"the header {expected_header}", "an empty file")
            cells = [cell.strip().lower() for cell in header]
            while cells and not cells[-1]:
                cells.pop()  # "image,caption," names no third column
            # A third column would be glued onto each caption (the last column takes the cells after it).
            if cells != list(spec.header):
                raise SchemaError(path, "line 1", f"the header {expected_header}", f"{_cells(header)}")
            read = reader.line_num
            for row in reader:
                line, read = read + 1, reader.line_num
                if not "".join(row).strip():
                    continue
                width = len(spec.columns)
                if len(row) < width:
                    raise SchemaError(path, f"line {line}", expected_header, _cells(row))
                cells = [cell.strip() for cell in row[: width - 1]] + [",".join(row[width - 1 :]).strip()]
                for cell, column, test in zip(cells, spec.columns, spec.cells):
                    if not test(cell):
                        raise SchemaError(path, f"line {line}", column, f"{cell[:40]!r}" + ("..." * (len(cell) > 40)))
                yield line, cells
        except csv.Error as error:  # a quote left open, a field beyond csv's size limit, a NUL in older Pythons
            raise SchemaError(path, f"line {read + 1}", "valid CSV", _short(error)) from None

    def read_lines(self, path: Path, expected: str) -> list[str]:
        """The lines of a UTF-8 text file (``\\n``-separated, each stripped), trailing blank lines aside."""
        lines = [line.strip() for line in self.read_text(path, expected).split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines


def _member(f: h5py.File, name: str) -> bool:
    try:
        return name in f
    except Exception:  # a name h5py cannot even look up (a damaged link) is not there
        return False


def _entries(file: H5File, split: str) -> str:
    return ", ".join(f"{a.names[0].format(split=split)} ({a.describe(split)})" for a in file.arrays)


def _cells(row: list[str]) -> str:
    shown = repr(row)
    return shown[:80] + ("..." if len(shown) > 80 else "")


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def _unwritten(entry: h5py.Dataset) -> str | None:
    """Why a dataset's values are not all on disk (never written, or a virtual/external mapping), or None.

    Such a dataset reads back its fill value, so a shape of 10^12 rows would take a file of a few
    bytes and a scan of it would never end.
    """
    if entry.size == 0:
        return None
    if entry.is_virtual:
        return "a virtual dataset (its values live in other files)"
    if entry.external:
        return "an external dataset (its values live in other files)"
    if entry.chunks is not None:
        expected = math.prod(math.ceil(size / chunk) for size, chunk in zip(entry.shape, entry.chunks))
        stored = entry.id.get_num_chunks()
        return f"{stored} of its {expected} chunks written" if stored < expected else None
    stored, nominal = entry.id.get_storage_size(), entry.size * entry.dtype.itemsize
    return f"{stored} of its {nominal} bytes written" if stored < nominal else None


# --- the vocabulary -----------------------------------------------------------------------------------------------


def check_vocabulary(path: Path, vocab: dict) -> dict[str, int]:
    """The vocabulary's cross-checks after its types: unique ids, the special tokens, both maps agreeing.

    Ids may have gaps (cs231n's own check builds a model on ``{<NULL>: 0, cat: 2, dog: 3}``); the
    model then has V = len(word_to_idx) score rows, so the special tokens it feeds itself need ids below V.

    Returns:
        ``word_to_idx``.
    """
    word_to_idx, idx_to_word = vocab["word_to_idx"], vocab["idx_to_word"]
    seen: dict[int, str] = {}
    for word, idx in word_to_idx.items():
        if idx in seen:
            raise SchemaError(path, "word_to_idx", "a distinct id per word", f"id {idx} for {seen[idx]!r} and {word!r}")
        seen[idx] = word
    size = len(word_to_idx)
    special = vocabulary.SPECIAL_TOKENS[:3]
    missing = [token for token in special if token not in word_to_idx]
    if missing:
        raise SchemaError(path, "word_to_idx", f"the special tokens {special} in word_to_idx", f"{missing} missing")
    for token in special:
        if word_to_idx[token] >= size:
            raise SchemaError(path, f"word_to_idx[{token!r}]", f"an id below the vocabulary size {size}",
                              f"{word_to_idx[token]}")  # fmt: skip
    listed = idx_to_word.items() if isinstance(idx_to_word, dict) else enumerate(idx_to_word)
    stated = {}
    for idx, word in listed:
        if word is None:
            continue
        if isinstance(idx, str):
            if not (idx.isascii() and idx.isdigit()):
                raise SchemaError(path, "idx_to_word", "integer ids as keys", f"the key {idx[:40]!r}")
            idx = int(idx)
        stated[idx] = word
    if stated != seen:
        differing = sorted(set(stated.items()) ^ set(seen.items()))
        idx, word = differing[0]
        raise SchemaError(path, "idx_to_word", "idx_to_word and word_to_idx describing the same vocabulary",
                          f"they disagree at id {idx} ({word!r} in only one of them)")  # fmt: skip
    return dict(word_to_idx)
