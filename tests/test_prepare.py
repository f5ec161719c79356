"""Images + captions -> a cs231n-layout folder -> training -> captions for image files, offline (TEST backbone).

The embedded dataset's scenes are written as image files; the backbone is VGG-16 with seeded random
weights, so these tests check the path (files, resumption, records, refusals), not caption quality.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from caption_torch import caption, evaluate, prepare
from caption_torch.cli import train as train_cli
from caption_torch.data import captions as caption_files
from caption_torch.data import cs231n as coco
from caption_torch.data.datamodule import CaptionDataModule
from caption_torch.data.sources import open_source
from caption_torch.data.synthetic.images import write_scene_images
from caption_torch.features.extractor import RecordedExtractor
from caption_torch.features.pca import Pca
from caption_torch.features.record import read_record

REPO = Path(__file__).resolve().parents[1]


def prepare_args(images: Path, captions: Path, out: Path, *extra) -> list[str]:
    return ["--images", str(images), "--captions", str(captions), "--out", str(out), "--weights", "random",
            "--pca-dim", "3", "--batch-size", "2", "--workers", "0", "--min-word-count", "1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> tuple[Path, Path]:
    """8 drawn scenes (4 train, 2 val, 2 test) and their Karpathy-format captions file."""
    root = tmp_path_factory.mktemp("scenes")
    captions = write_scene_images(root, size="tiny", max_images=4)
    return root / "images", captions


@pytest.fixture(scope="module")
def prepared(scene_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    assert prepare.main(prepare_args(*scene_files, out)) == 0
    return out


def test_prepared_folder_is_cs231n_layout_with_a_record(prepared, scene_files):
    dm = CaptionDataModule(open_source(prepared))
    dm.setup("fit")
    assert dm.num_images == {"train": 4, "val": 2, "test": 2} and dm.feature_dim == 3
    splits = coco.read_captions(prepared)
    assert splits["test"].captions.shape[1] == caption_files.MAX_WORDS + 2
    assert coco.feature_shape(prepared, "val", pca_features=False) == (2, 4096)
    record = read_record(prepared)
    assert record["weights"]["kind"] == "random" and "TEST backbone" in record["weights"]["label"]
    assert record["images"]["val"] == ["val_000000.png", "val_000001.png"]
    assert coco.read_urls(prepared, "val")[0] == (scene_files[0] / "val_000000.png").resolve().as_uri()
    pca = Pca.load(prepared / record["pca"]["file"])
    fc7 = coco.read_features(prepared, "test", pca_features=False)
    np.testing.assert_allclose(pca.transform(fc7), coco.read_features(prepared, "test"), rtol=1e-6, atol=1e-6)


def test_new_images_get_the_features_the_folder_has(prepared, scene_files):
    paths = [scene_files[0] / "val_000001.png", scene_files[0] / "val_000000.png"]
    features, kept, problems = RecordedExtractor(prepared).features(paths)
    assert problems == {} and kept == paths
    np.testing.assert_allclose(features, coco.read_features(prepared, "val")[::-1], rtol=1e-4, atol=1e-4)


def test_resume_after_a_kill_ends_with_the_same_bytes(prepared, scene_files, tmp_path, capsys):
    out = tmp_path / "data"
    command = [sys.executable, "-m", "caption_torch.prepare", *prepare_args(*scene_files, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # the tests' thread count: same sums
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress, done = out / prepare.WORK_DIR / "progress.json", 0
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if progress.is_file():
            try:
                done = json.loads(progress.read_text())["rows_done"]
            except (ValueError, KeyError):
                done = 0
            if done >= 2:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 <= done < 8, f"the kill came at {done} of 8 images"
    assert not (out / "features.json").exists()
    assert prepare.main(prepare_args(*scene_files, out)) == 0
    assert f"resuming: {done} of 8 images already extracted" in capsys.readouterr().out
    assert not (out / prepare.WORK_DIR).exists()
    names = sorted(path.name for path in prepared.iterdir())
    assert sorted(path.name for path in out.iterdir()) == names
    for name in names:
        assert (out / name).read_bytes() == (prepared / name).read_bytes(), name


def test_bad_images_are_converted_or_skipped_and_listed(scene_files, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    scene = Image.open(scene_files[0] / "train_000000.png").convert("RGB")
    good = {"plain.png": scene, "grey.png": scene.convert("L"), "cmyk.jpg": scene.convert("CMYK"),
            "palette.png": scene.convert("P"), "alpha.png": scene.convert("RGBA")}  # fmt: skip
    for name, image in good.items():
        image.save(images / name)
    exif = Image.Exif()
    exif[0x0112] = 8
    scene.save(images / "rotated.jpg", exif=exif)
    Image.fromarray((np.asarray(scene.convert("L"), dtype=np.uint16) * 257)).save(images / "wide.png")
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.png").write_bytes((images / "plain.png").read_bytes()[:300])
    (images / "text.jpg").write_text("no picture here")
    Image.new("1", (10_000, 9_000)).save(images / "bomb.png")
    train = [*good, "rotated.jpg", "wide.png", "empty.jpg", "truncated.png", "text.jpg", "bomb.png", "gone.jpg"]
    entries = [{"filename": name, "split": "train", "sentences": [{"raw": f"a picture {i}"}]}
               for i, name in enumerate(train)]  # fmt: skip
    scene.save(images / "val.png")
    entries += [{"filename": "val.png", "split": "val", "sentences": [{"raw": "again"}]}]
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps({"images": entries}))
    out = tmp_path / "data"
    assert prepare.main(prepare_args(images, captions, out)) == 0
    printed = capsys.readouterr().out
    assert "skipped 5 images" in printed
    skipped = dict(line.split("\t") for line in (out / "skipped.tsv").read_text().splitlines()[1:])
    assert skipped.keys() == {"gone.jpg", "empty.jpg", "truncated.png", "text.jpg", "bomb.png"}
    assert skipped["gone.jpg"] == "missing file" and skipped["empty.jpg"] == "empty file (0 bytes)"
    assert skipped["bomb.png"].startswith("decompression bomb")
    assert read_record(out)["images"]["train"] == [*good, "rotated.jpg", "wide.png"]
    assert coco.feature_shape(out, "train") == (7, 3)


def test_a_split_left_without_images_names_one_of_them(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("train_0.png", "train_1.png", "val_0.png"):
        (images / name).write_text("not a picture")  # the run stops before skipped.tsv: the error line says why
    captions = tmp_path / "dataset.json"
    for train, message in [
        (["gone_0.png", "gone_1.png"], "error: no train image is left (2 missing, the first gone_0.png): "),
        (["train_0.png", "train_1.png"], "error: every train image was skipped, nothing to write: "
                                         "train_0.png: not an image Pillow can read (1 more)"),
    ]:  # fmt: skip
        entries = [{"filename": name, "split": split, "sentences": [{"raw": "a scene"}]}
                   for split, names in (("train", train), ("val", ["val_0.png"])) for name in names]  # fmt: skip
        captions.write_text(json.dumps({"images": entries}))
        assert prepare.main(prepare_args(images, captions, tmp_path / "out", "--pca-dim", "1")) == 2
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(message), captured.err
        assert "skipped.tsv" not in captured.out + captured.err and not (tmp_path / "out" / "skipped.tsv").exists()


def test_a_bad_captions_file_is_one_error_line(scene_files, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("image,caption\ntrain_000000.png,a scene\ntrain_000001.png\n")
    assert prepare.main(prepare_args(scene_files[0], captions, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 3" in err and err.count("\n") == 1


def test_pca_dimension_above_the_train_images_is_refused(scene_files, tmp_path, capsys):
    args = prepare_args(*scene_files, tmp_path / "out")
    args[args.index("--pca-dim") + 1] = "5"
    assert prepare.main(args) == 2
    assert "--pca-dim 5 is more than the 4 train images" in capsys.readouterr().err


def test_a_min_word_count_that_leaves_no_word_is_refused_before_extraction(scene_files, tmp_path, capsys):
    args = prepare_args(*scene_files, tmp_path / "out")
    args[args.index("--min-word-count") + 1] = "1000"
    assert prepare.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --min-word-count 1000 leaves no word in the vocabulary: the most frequent")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()  # refused before any extraction


def test_a_rerun_into_the_same_folder_keeps_no_file_of_the_earlier_run(prepared, scene_files, tmp_path):
    out = tmp_path / "data"
    assert prepare.main(prepare_args(*scene_files, out)) == 0
    assert (out / coco.feature_file("test", pca_features=True)).exists()
    without_test = json.loads(scene_files[1].read_text())
    without_test["images"] = [image for image in without_test["images"] if image["split"] != "test"]
    captions = tmp_path / "dataset_no_test.json"
    captions.write_text(json.dumps(without_test))
    assert prepare.main(prepare_args(scene_files[0], captions, out)) == 0
    left = sorted(path.name for path in out.iterdir() if path.name.startswith("test"))
    assert left == [] and sorted(read_record(out)["images"]) == ["train", "val"]


@pytest.mark.parametrize("data_dir", [None, "cs231n"])
def test_caption_refuses_features_without_a_recorded_extractor(data_dir, coco_folder, scene_files, tmp_path, capsys):
    ckpt = tmp_path / "fake.ckpt"
    folder = None if data_dir is None else str(coco_folder)
    torch.save({"datamodule_hyper_parameters": {"data_dir": folder, "pca_features": True}}, ckpt)
    assert caption.main(["--ckpt", str(ckpt), str(scene_files[0] / "val_000000.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and ("embedded dataset" if data_dir is None else "features.json") in err[-1]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda r: r["weights"].update(kind="cloud"),
         "weights.kind: expected one of ['file', 'imagenet', 'random'], found the string 'cloud'"),
        (lambda r: r["images"].update(val=["a.png", 7]), "images['val'][1]: expected a file name, found the number 7"),
        (lambda r: r.pop("pca"), "expected the key 'pca' (an object with file and dim)"),
    ],
)  # fmt: skip
def test_caption_names_the_entry_of_a_bad_record(prepared, scene_files, tmp_path, capsys, change, message):
    folder = tmp_path / "data"
    folder.mkdir()
    record = json.loads((prepared / "features.json").read_text())
    change(record)
    (folder / "features.json").write_text(json.dumps(record))
    ckpt = tmp_path / "fake.ckpt"
    torch.save({"datamodule_hyper_parameters": {"data_dir": str(folder), "pca_features": True}}, ckpt)
    assert caption.main(["--ckpt", str(ckpt), str(scene_files[0] / "val_000000.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: {folder / 'features.json'}: ") and message in err[-1], err


def run_path(images: Path, captions: Path, root: Path, epochs: int, capsys) -> dict:
    """prepare -> train.py --data-dir -> caption -> evaluate --split test --html; what each printed."""
    data = root / "data"
    assert prepare.main(prepare_args(images, captions, data)) == 0
    train_cli.main(["--data-dir", str(data), "--epochs", str(epochs), "--batch-size", "16", "--hidden-dim", "32",
                    "--wordvec-dim", "16", "--accelerator", "cpu", "--log-dir", str(root)])  # fmt: skip
    ckpt = next(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    capsys.readouterr()
    jsonl = root / "captions.jsonl"
    assert caption.main(["--ckpt", str(ckpt), str(images), "--jsonl", str(jsonl)]) == 0
    captioned = capsys.readouterr()
    html = root / "html"
    code = evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(data), "--split", "test", "--no-meteor",
                          "--jsonl", str(root / "test.jsonl"), "--html", str(html)])  # fmt: skip
    assert code == 0
    return {"caption": captioned, "jsonl": jsonl, "html": html, "evaluate": capsys.readouterr().out, "data": data}


def check_path(result: dict, num_images: int, num_test: int) -> None:
    lines = result["caption"].out.strip().splitlines()
    assert len(lines) == num_images and all(line.endswith("\t[TEST backbone]") for line in lines)
    assert "TEST backbone" in result["caption"].err
    records = [json.loads(line) for line in result["jsonl"].read_text().splitlines()]
    assert len(records) == num_images and all(record["test_backbone"] for record in records)
    assert f"test split, {num_test} images" in result["evaluate"]
    page = (result["html"] / "data.js").read_text()
    pictures = json.loads(page[page.index("{") : page.rindex("}") + 1])["images"]
    assert len(pictures) == num_test
    for picture in (row[1] for row in pictures):
        assert picture.startswith("thumbnails/") and (result["html"] / picture).is_file()


def test_offline_path_on_a_few_images(scene_files, tmp_path, capsys):
    result = run_path(*scene_files, tmp_path, epochs=1, capsys=capsys)
    check_path(result, num_images=8, num_test=2)
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    ckpt = next(tmp_path.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    assert caption.main(["--ckpt", str(ckpt), str(notes)]) == 2  # no image left: one error line, as for any refusal
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err == [f"error: no image could be captioned: {notes}: not an image Pillow can read"]


@pytest.mark.slow
def test_offline_path_on_the_tiny_embedded_dataset(tmp_path, capsys):
    captions = write_scene_images(tmp_path / "scenes", size="tiny")
    result = run_path(tmp_path / "scenes" / "images", captions, tmp_path, epochs=10, capsys=capsys)
    with h5py.File(result["data"] / coco.CAPTIONS_FILE) as f:
        num_test = len(np.unique(f["test_image_idxs"]))
    check_path(result, num_images=160, num_test=num_test)
