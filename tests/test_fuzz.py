"""Property-based fuzzing of every input: each file of a valid folder, checkpoints, flags.

The property, for any mutation: the command exits 0, or exits 2 with exactly one ``error:`` line;
never a traceback, another exit code (1 is the net of ``caption_torch/guard.py``: a bug), or a hang.

The commands run in-process (their ``main``, stdout and stderr captured). In the fast profile
(the default suite) train.py stops where Lightning would start: everything it reads and checks
has been read and checked by then. The long profile (``pytest -m slow``) runs Lightning's fast dev
run for real and draws many more cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import h5py
import numpy as np
import pytest
import torch
from conftest import write_coco_folder
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from caption_torch import evaluate, prepare
from caption_torch.cli import train as cli_train
from caption_torch.features import record as record_module
from caption_torch.features import vgg
from caption_torch.training.checkpointing import tensor_checksum

# FUZZ_EXAMPLES=N draws N fresh cases per test in the fast profile (a hunt); by default, 12 fixed ones.
HUNT = int(os.environ.get("FUZZ_EXAMPLES", 0))
settings.register_profile("fuzz-fast", max_examples=HUNT or 12, deadline=None, derandomize=not HUNT, database=None,
                          suppress_health_check=list(HealthCheck))  # fmt: skip
settings.register_profile("fuzz-long", max_examples=HUNT or 300, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))  # fmt: skip
settings.register_profile("fuzz-captions", max_examples=HUNT or 60, deadline=None, derandomize=not HUNT,
                          database=None, suppress_health_check=list(HealthCheck))  # fmt: skip
FAST, LONG = settings.get_profile("fuzz-fast"), settings.get_profile("fuzz-long")
CAPTIONS_FAST = settings.get_profile("fuzz-captions")  # cases of a few milliseconds: more of them
HANG_SECONDS = 120  # far beyond any case of the tiny folder; a case still running is a hang

SMALL = ["--hidden-dim", "8", "--wordvec-dim", "8", "--batch-size", "4", "--epochs", "1", "--accelerator", "cpu",
         "--devices", "1"]  # fmt: skip
SCENE = {"setting": "beach", "relation": None,
         "objects": [{"noun": "dog", "shape": "animal", "colour": "red", "size": "small", "count": 1,
                      "positions": [[0.4, 0.3]]}]}  # fmt: skip


def tiny_folder(root: Path) -> Path:
    """A valid folder: 4 train and 2 val images, 8-d and 16-d features, URLs for train, scenes for val."""
    folder = write_coco_folder(root, num_train_images=4, num_val_images=2, captions_per_image=2, pca_dim=8,
                               full_dim=16)  # fmt: skip
    (folder / "val2014_scenes.json").write_text(json.dumps([SCENE, SCENE]))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> SimpleNamespace:
    """The valid folder and a checkpoint of a one-epoch run on it (H=8, W=8)."""
    root = tmp_path_factory.mktemp("fuzz")
    folder = tiny_folder(root / "data")
    code, err = run(cli_train.main, ["--data-dir", str(folder), *SMALL, "--log-dir", str(root / "run")])
    assert code == 0, err
    (checkpoint,) = (root / "run").glob("lightning_logs/version_0/checkpoints/last.ckpt")
    return SimpleNamespace(folder=folder, checkpoint=checkpoint)


class Hang(Exception):
    pass


def run(main, argv: list[str]) -> tuple[int, str]:
    """``main(argv)``'s exit code (its return or SystemExit's) and everything it wrote to stderr."""
    err = io.StringIO()

    def hang(signum, frame):
        raise Hang(f"no answer in {HANG_SECONDS} s: {argv}")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_SECONDS)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit:
                code = exit.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def assert_property(code, err: str) -> None:
    """Exit 0, or exit 2 with exactly one ``error:`` line; no traceback."""
    errors = [line for line in err.splitlines() if "error:" in line]
    event(f"exit {code}")  # --hypothesis-show-statistics tallies the outcomes
    assert "Traceback" not in err, err
    assert code == 0 or (code == 2 and len(errors) == 1), f"exit {code}:\n{err[-3000:]}"


@contextlib.contextmanager
def until_lightning(real: bool):
    """The fast profile's train.py: everything before Lightning's Trainer runs; Lightning itself is skipped."""
    if real:
        yield
        return
    with mock.patch.object(cli_train, "make_trainer", lambda *a, **k: SimpleNamespace(is_global_zero=True)), \
            mock.patch.object(cli_train, "fit", lambda parts: Path(".")):  # fmt: skip
        yield


def train_on(folder: Path, log_dir: Path, *extra: str, real: bool = False) -> tuple[int, str]:
    with until_lightning(real):
        return run(cli_train.main, ["--data-dir", str(folder), *SMALL, *extra, "--fast-dev-run", "--log-dir",
                                    str(log_dir)])  # fmt: skip


# --- strategies -------------------------------------------------------------------------------------------------

JSON_LEAVES = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
               | st.text(max_size=8))  # fmt: skip
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)  # fmt: skip
DTYPES = [np.int8, np.uint8, np.int64, np.uint64, np.float16, np.float64, np.bool_, "S4", np.complex64]
FILES = ["coco2014_captions.h5", "coco2014_vocab.json", "train2014_vgg16_fc7_pca.h5", "val2014_vgg16_fc7_pca.h5",
         "train2014_urls.txt", "val2014_scenes.json"]  # fmt: skip


def mutate_bytes(path: Path, draw) -> str:
    """A file-level fault: truncated, garbage, not UTF-8, gone, or a folder in its place."""
    kind = draw(st.sampled_from(["truncate", "garbage", "not utf-8", "delete", "folder", "empty"]))
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    elif kind == "garbage":
        at = draw(st.integers(0, len(data)))
        path.write_bytes(data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at + 64 :])
    elif kind == "not utf-8":
        at = draw(st.integers(0, len(data)))
        path.write_bytes(data[:at] + b"\xff\xfe\xc3" + data[at:])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
        if kind == "folder":
            path.mkdir()
    return kind


def mutate_h5(path: Path, draw) -> str:
    """A structural fault in one HDF5 entry: group for dataset, dtype, dimensions, sizes, values, absence."""
    with h5py.File(path, "a") as f:
        key = draw(st.sampled_from(sorted(f.keys())))
        old = f[key][()]
        kind = draw(st.sampled_from(["group", "dtype", "add dim", "drop dim", "resize", "values", "scalar",
                                     "unwritten", "delete", "rename", "empty"]))  # fmt: skip
        del f[key]
        if kind == "group":
            group = f.create_group(key)
            if draw(st.booleans()):
                group[key] = old
        elif kind == "dtype":
            dtype = draw(st.sampled_from(DTYPES))
            f[key] = old.astype(dtype) if dtype != "S4" else old.astype(str).astype("S4")
        elif kind == "add dim":
            f[key] = np.repeat(old[..., None], draw(st.integers(0, 3)), axis=-1)
        elif kind == "drop dim":
            f[key] = old.reshape(-1) if old.ndim > 1 else old[0]
        elif kind == "resize":
            rows = draw(st.integers(0, 3 * old.shape[0] + 1))
            f[key] = np.resize(old, (rows, *old.shape[1:]))
        elif kind == "values":
            values = old.copy()
            flat = values.reshape(-1)
            at = draw(st.integers(0, flat.size - 1))
            if values.dtype.kind == "f":
                flat[at] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38, -1e38]))
            else:
                flat[at] = draw(st.integers(np.iinfo(values.dtype).min, np.iinfo(values.dtype).max))
            f[key] = values
        elif kind == "scalar":
            f[key] = draw(st.integers(-5, 5))
        elif kind == "unwritten":
            rows = draw(st.sampled_from([10**6, 10**9, 2**40]))
            f.create_dataset(key, shape=(rows, *old.shape[1:]), chunks=(1, *old.shape[1:]), dtype=old.dtype)
        elif kind == "rename":
            f[key + "_old"] = old
        elif kind == "empty":
            f[key] = old[:0]
    return f"{kind} {key}"


def mutate_json(path: Path, draw) -> str:
    """A fault in a JSON file: a value swapped for any other JSON, a key dropped or added, deep nesting."""
    kind = draw(st.sampled_from(["swap", "drop", "add", "nest"]))
    if kind == "nest":
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        path.write_text("[" * depth + "]" * depth)
        return kind
    value = json.loads(path.read_text())
    node, trail = value, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        step = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        trail.append((node, step))
        node = node[step]
    if not trail:
        path.write_text(json.dumps(draw(JSON_VALUES)))
        return "replace all"
    parent, step = trail[-1]
    if kind == "swap":
        parent[step] = draw(JSON_VALUES)
    elif kind == "drop":
        del parent[step]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    else:
        parent.insert(step, draw(JSON_VALUES))
    path.write_text(json.dumps(value))
    return f"{kind} at {[s for _, s in trail]}"


def mutate_text(path: Path, draw) -> str:
    """A fault in a URL file: lines dropped, doubled, blank, or carriage returns."""
    lines = path.read_text().split("\n")
    kind = draw(st.sampled_from(["drop", "double", "blank", "cr", "long"]))
    at = draw(st.integers(0, len(lines) - 1))
    if kind == "drop":
        del lines[at]
    elif kind == "double":
        lines.insert(at, lines[at])
    elif kind == "blank":
        lines.insert(at, "")
    elif kind == "cr":
        lines[at] += "\r"
    else:
        lines[at] = "x" * 100_000
    path.write_text("\n".join(lines))
    return kind


@st.composite
def mutated_folder(draw, root: Path, base: Path) -> tuple[Path, str]:
    folder = root / "data"
    shutil.copytree(base, folder)
    name = draw(st.sampled_from(FILES))
    path = folder / name
    structural = {".h5": mutate_h5, ".json": mutate_json, ".txt": mutate_text}[path.suffix]
    mutate = draw(st.sampled_from([structural, structural, mutate_bytes]))
    return folder, f"{name}: {mutate(path, draw)}"


# --- files ------------------------------------------------------------------------------------------------------


def check_folder(base, data, real: bool) -> None:
    with tempfile.TemporaryDirectory() as root:
        folder, what = data.draw(mutated_folder(Path(root), base.folder), label="mutation")
        code, err = train_on(folder, Path(root) / "logs", real=real)
        assert_property(code, err)


@FAST
@given(data=st.data())
def test_fuzz_folder(base, data):
    check_folder(base, data, real=False)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_fuzz_folder_long(base, data):
    check_folder(base, data, real=True)


# --- checkpoints ------------------------------------------------------------------------------------------------


def tensor_variants(tensor: torch.Tensor):
    return st.sampled_from([
        tensor[..., None], tensor.reshape(-1), tensor[:0] if tensor.ndim else tensor[None],
        torch.cat([tensor, tensor]) if tensor.ndim else tensor,
        tensor.long(), tensor.bool(), tensor.half(), torch.zeros(()), torch.full_like(tensor, float("nan")),
    ])  # fmt: skip


@st.composite
def mutated_checkpoint(draw, path: Path) -> tuple[dict, str]:
    """A checkpoint with one fault: top-level, hyperparameter or tensor keys missing or foreign, types, shapes."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint = {key: (dict(value) if isinstance(value, dict) else value) for key, value in checkpoint.items()}
    part = draw(st.sampled_from(["top", "hyper_parameters", "state_dict", "optimizer_states"]))
    kind = draw(st.sampled_from(["drop", "add", "swap"]))
    if part == "top" or part == "optimizer_states" and kind != "swap":
        target = checkpoint
    elif part == "optimizer_states":
        state = checkpoint["optimizer_states"][0]["state"]
        index = draw(st.sampled_from(sorted(state)))
        moment = draw(st.sampled_from(["exp_avg", "exp_avg_sq", "step"]))
        checkpoint["optimizer_states"] = [{**checkpoint["optimizer_states"][0],
                                           "state": {**state, index: {**state[index], moment: draw(
                                               tensor_variants(state[index][moment]))}}}]  # fmt: skip
        return checkpoint, f"optimizer state {index} {moment}"
    else:
        target = checkpoint[part]
    key = draw(st.sampled_from(sorted(target, key=str)))
    if kind == "drop":
        del target[key]
    elif kind == "add":
        target[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES | st.just(torch.zeros(3)))
    elif part == "state_dict":
        target[key] = draw(tensor_variants(target[key]) | JSON_LEAVES)
    else:
        value = target[key]
        swaps = JSON_VALUES | st.sampled_from([float(value) if isinstance(value, int) else 0.5, str(value), True,
                                               -1, 0, 2**31, 10**30])  # fmt: skip
        target[key] = draw(swaps)
    if draw(st.integers(0, 4)):  # mostly consistent: then the structure, not the checksum, is what is refused
        checkpoint["tensor_sha256"] = tensor_checksum(checkpoint)
    return checkpoint, f"{kind} {part}[{key!r}]"


def check_checkpoint(base, data, real: bool) -> None:
    with tempfile.TemporaryDirectory() as root:
        checkpoint, what = data.draw(mutated_checkpoint(base.checkpoint), label="mutation")
        path = Path(root) / "mutated.ckpt"
        torch.save(checkpoint, path)
        if data.draw(st.booleans(), label="through train.py --init-from (else evaluate)"):
            code, err = train_on(base.folder, Path(root) / "logs", "--init-from", str(path), real=real)
        else:
            code, err = run(evaluate.main, ["--ckpt", str(path), "--data-dir", str(base.folder), "--no-meteor",
                                            "--jsonl", str(Path(root) / "c.jsonl")])  # fmt: skip
        assert_property(code, err)


@FAST
@given(data=st.data())
def test_fuzz_checkpoint(base, data):
    check_checkpoint(base, data, real=False)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_fuzz_checkpoint_long(base, data):
    check_checkpoint(base, data, real=True)


# --- flags ------------------------------------------------------------------------------------------------------

TRAIN_FLAGS = ["--hidden-dim", "--wordvec-dim", "--num-heads", "--num-layers", "--batch-size", "--epochs", "--lr",
               "--lr-decay", "--seed", "--overfit", "--max-val-images", "--num-workers", "--checkpoint-every",
               "--num-nodes", "--samples-per-image", "--devices"]  # fmt: skip
EVALUATE_FLAGS = ["--beam-size", "--temperature", "--max-length", "--max-images", "--batch-size", "--seed", "--show",
                  "--compare-beam-size"]  # fmt: skip
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["nan", "inf", "-inf", "", "0", "-0", "1e308", "1e-320", "abc", "0x10", "1_000", "2147483647",
                     "4294967296", "9" * 5000, "0,1", "-1", "auto"]),
)  # fmt: skip


def check_flags(base, data, real: bool) -> None:
    with tempfile.TemporaryDirectory() as root:
        if data.draw(st.booleans(), label="train.py (else evaluate)"):
            flags = data.draw(st.lists(st.sampled_from(TRAIN_FLAGS), min_size=1, max_size=2, unique=True))
            model = data.draw(st.sampled_from([[], ["--model", "transformer"], ["--model", "rnn"]]))
            given = [f"{flag}={data.draw(NUMBERS, label=flag)}" for flag in flags]
            code, err = train_on(base.folder, Path(root) / "logs", *model, *given, real=real)
        else:
            flags = data.draw(st.lists(st.sampled_from(EVALUATE_FLAGS), min_size=1, max_size=2, unique=True))
            given = [f"{flag}={data.draw(NUMBERS, label=flag)}" for flag in flags]
            code, err = run(evaluate.main, ["--ckpt", str(base.checkpoint), "--data-dir", str(base.folder),
                                            "--no-meteor", "--jsonl", str(Path(root) / "c.jsonl"),
                                            "--out", str(Path(root) / "grid.png"), *given])  # fmt: skip
        assert_property(code, err)


@FAST
@given(data=st.data())
def test_fuzz_flags(base, data):
    check_flags(base, data, real=False)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_fuzz_flags_long(base, data):
    check_flags(base, data, real=True)


# --- caption files and features.json ----------------------------------------------------------------------------

IMAGES = ["a.png", "b.png", "c.png", "d.png"]  # no split in COCO's or the CSV: 2 train, 1 val, 1 test by the seed
CAPTION_FILES = {
    "captions.json": {  # COCO
        "images": [{"id": i, "file_name": name} for i, name in enumerate(IMAGES)],
        "annotations": [{"image_id": i, "caption": f"a picture of thing {i}, red."} for i in range(4)]
        + [{"image_id": 0, "caption": "another one"}],
    },
    "dataset_flickr8k.json": {  # Karpathy
        "dataset": "flickr8k",
        "images": [{"filename": name, "split": split, "sentences": [{"raw": "a dog runs.", "tokens": ["a", "dog"]},
                                                                     {"tokens": ["a", "cat"]}]}
                   for name, split in zip(IMAGES, ["train", "restval", "val", "test"])],
    },
    "captions.txt": "image,caption\n" + "".join(f"{name},A dog, running {i}.\n" for i, name in enumerate(IMAGES))
    + f'{IMAGES[0]},"a quoted, caption"\n',
}  # fmt: skip
RECORD = {"format": 1, "weights": {"kind": "random", "url": None, "path": None, "sha256": None, "seed": 0},
          "pca": {"file": "vgg16_fc7_pca_basis.h5", "dim": 1}, "images_dir": "/images",
          "images": {"train": ["a.png"], "val": ["b.png"]}}  # fmt: skip
HUGE = ["9" * 5000, "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" * 20, "-0", "1.5"]


@pytest.fixture(scope="module")
def caption_images(tmp_path_factory) -> Path:
    """4 tiny PNGs: prepare resolves caption files' names to them (its extraction is replaced in the fuzz)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    for i, name in enumerate(IMAGES):
        Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(folder / name)
    return folder


def mutate_json_number(path: Path, draw) -> str:
    """A value swapped for a number JSON can write but a reader may not hold: huge, inf, NaN."""
    value = json.loads(path.read_text())
    node, trail = value, []
    while isinstance(node, (dict, list)) and node and (not trail or draw(st.booleans())):
        step = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        trail.append((node, step))
        node = node[step]
    parent, step = trail[-1]
    parent[step] = "__number__"
    number = draw(st.sampled_from(HUGE))
    path.write_text(json.dumps(value).replace('"__number__"', number))
    return f"{number[:8]} at {[s for _, s in trail]}"


def mutate_csv(path: Path, draw) -> str:
    """A fault in a CSV line: dropped, doubled, a missing or extra cell, quotes, NUL, a huge field."""
    lines = path.read_text().split("\n")
    kind = draw(st.sampled_from(["drop", "double", "blank", "cr", "one cell", "empty cell", "quote", "nul", "huge",
                                 "punctuation", "any text"]))  # fmt: skip
    at = draw(st.integers(0, len(lines) - 1))
    if kind == "drop":
        del lines[at]
    elif kind == "double":
        lines.insert(at, lines[at])
    elif kind == "blank":
        lines.insert(at, "  ")
    elif kind == "cr":
        lines[at] += "\r"
    elif kind == "one cell":
        lines[at] = lines[at].split(",")[0]
    elif kind == "empty cell":
        lines[at] = "," + lines[at].partition(",")[2]
    elif kind == "quote":
        lines[at] = '"' + lines[at]
    elif kind == "nul":
        lines[at] += "\0"
    elif kind == "huge":
        lines[at] += '"' + "x" * 200_000 + '"'
    elif kind == "punctuation":
        lines[at] = lines[at].partition(",")[0] + ",..."
    else:
        lines[at] = draw(st.text(max_size=20))
    path.write_text("\n".join(lines))
    return kind


@st.composite
def mutated_caption_file(draw, root: Path) -> tuple[Path, str]:
    name = draw(st.sampled_from(sorted(CAPTION_FILES)))
    path = root / name
    content = CAPTION_FILES[name]
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    if name.endswith(".txt"):
        mutate = draw(st.sampled_from([mutate_csv, mutate_csv, mutate_bytes]))
    else:
        mutate = draw(st.sampled_from([mutate_json, mutate_json, mutate_json_number, mutate_bytes]))
    return path, f"{name}: {mutate(path, draw)}"


def fake_features(model, paths, work_dir, job, *args):
    """extract_resumable's place in the fuzz: random 8-d "fc7" rows, nothing skipped (captions are what is fuzzed).

    Narrow rows keep the PCA of a single train image (its covariance route) instant.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    return np.random.default_rng(0).standard_normal((len(paths), 8)).astype(np.float32), {}


def prepare_captions(images: Path, captions: Path, out: Path) -> tuple[int, str]:
    """prepare's main with the backbone and its extraction replaced: reading, splitting, tokenising, encoding,
    the PCA and the writes run."""
    backbone = lambda weights, seed=0, **_: (None, vgg.WeightsSource(vgg.RANDOM_WEIGHTS, None, None, seed))  # noqa: E731
    with mock.patch.object(prepare.vgg, "build_backbone", backbone), \
            mock.patch.object(prepare, "extract_resumable", fake_features):  # fmt: skip
        return run(prepare.main, ["--images", str(images), "--captions", str(captions), "--weights", "random",
                                  "--pca-dim", "1", "--min-word-count", "1", "--out", str(out)])  # fmt: skip


@pytest.mark.parametrize("name", sorted(CAPTION_FILES))
def test_caption_fuzz_starts_from_files_prepare_takes(caption_images, tmp_path, name):
    path = tmp_path / name
    content = CAPTION_FILES[name]
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    code, err = prepare_captions(caption_images, path, tmp_path / "out")
    assert code == 0, err
    words = json.loads((tmp_path / "out" / "coco2014_vocab.json").read_text())["idx_to_word"]
    assert words[:4] == ["<NULL>", "<START>", "<END>", "<UNK>"] and len(words) > 4


@CAPTIONS_FAST
@given(data=st.data())
def test_fuzz_caption_files(caption_images, data):
    """prepare on a mutated COCO, Karpathy or CSV file: exit 0, or exit 2 with one error line."""
    with tempfile.TemporaryDirectory() as root:
        path, what = data.draw(mutated_caption_file(Path(root)), label="mutation")
        code, err = prepare_captions(caption_images, path, Path(root) / "out")
        event(what.split(":")[0])
        assert_property(code, err)


@CAPTIONS_FAST
@given(data=st.data())
def test_fuzz_features_record(data):
    """A mutated features.json: read as a record, or refused with a RecordError naming the entry."""
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / record_module.RECORD_FILE
        path.write_text(json.dumps(RECORD))
        mutate = data.draw(st.sampled_from([mutate_json, mutate_json, mutate_json_number, mutate_bytes]))
        mutate(path, data.draw)
        try:
            record_module.image_files(root, "train")
        except record_module.RecordError as error:
            assert str(error).startswith(str(path)) and "expected" in str(error), error
