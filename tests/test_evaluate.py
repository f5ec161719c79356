"""python -m caption_torch.evaluate: safe checkpoint loading, mismatch errors, scores, JSON lines, pictures."""

import json
import re

import pytest
import torch
from conftest import write_coco_folder

import train
from caption_torch import evaluate
from caption_torch.checkpointing import tensor_checksum
from caption_torch.plots import caption_grid, plot_loss_history


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint from a short train.py run on a small cs231n-layout folder."""
    root = tmp_path_factory.mktemp("evaluate")
    folder = write_coco_folder(root / "coco")
    assert 0 == train.main(
        [
            "--data-dir",
            str(folder),
            "--overfit",
            "30",
            "--batch-size",
            "10",
            "--epochs",
            "8",
            "--hidden-dim",
            "32",
            "--wordvec-dim",
            "16",
            "--accelerator",
            "cpu",
            "--log-dir",
            str(root),
        ]
    )
    ckpt = next(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    return folder, ckpt


def test_load_model_rebuilds_the_trained_model(trained):
    folder, ckpt = trained
    model = evaluate.load_model(ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert model.hidden_dim == 32 and model.wordvec_dim == 16 and model.vocab_size == 13
    torch.testing.assert_close(model.W_vocab, state["state_dict"]["model.W_vocab"])


def test_evaluate_prints_every_metric_and_writes_captions(trained, tmp_path, capsys):
    folder, ckpt = trained
    jsonl, grid = tmp_path / "caps.jsonl", tmp_path / "grid.png"
    code = evaluate.main(
        [
            "--ckpt",
            str(ckpt),
            "--data-dir",
            str(folder),
            "--beam-size",
            "3",
            "--jsonl",
            str(jsonl),
            "--show",
            "4",
            "--out",
            str(grid),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for name in ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"]:
        assert re.search(rf"^{name}: \d+\.\d{{4}}$", out, re.M), name
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 6 and records[0]["url"].startswith("http://example.org/val/")
    assert len(records[0]["references"]) == 3 and isinstance(records[0]["generated"], str)
    assert grid.stat().st_size > 10_000  # URLs are unreachable here: panels show the URL instead


def test_greedy_and_beam_one_score_the_same(trained, tmp_path, capsys):
    folder, ckpt = trained
    outputs = []
    for args in (["--method", "greedy"], ["--method", "beam", "--beam-size", "1"]):
        evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(folder), "--jsonl", str(tmp_path / "c.jsonl"), *args])
        outputs.append(re.findall(r"^(?:BLEU-\d|CIDEr-D): .*$", capsys.readouterr().out, re.M))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 5


def test_checkpoint_that_does_not_fit_the_data(trained, tmp_path, capsys):
    _, ckpt = trained
    other = write_coco_folder(tmp_path / "other", pca_dim=64)
    assert evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(other)]) == 2
    assert "expects 512-d features but the data has 64-d" in capsys.readouterr().err


def test_output_folders_are_checked_before_captioning(trained, tmp_path, capsys):
    folder, ckpt = trained
    for flags in (["--jsonl", tmp_path / "no" / "c.jsonl"], ["--show", "2", "--out", tmp_path / "no" / "g.png"]):
        assert evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(folder), *map(str, flags)]) == 2
        captured = capsys.readouterr()
        assert f"error: cannot write {tmp_path / 'no'}" in captured.err and "BLEU" not in captured.out


def test_vocabulary_mismatch_names_the_difference(trained):
    model = evaluate.load_model(trained[1])
    vocab = dict(model.word_to_idx) | {"zebra": 13}
    with pytest.raises(evaluate.CheckpointError, match="first difference: 'zebra'"):
        evaluate.check_model_fits_data(model, vocab, 512)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(evaluate.CheckpointError, match="does not exist"):
        evaluate.load_model(tmp_path / "none.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(evaluate.CheckpointError, match="cannot be loaded safely"):
        evaluate.load_model(bad)


@pytest.mark.parametrize("damage, message", [
    (lambda c: c["hyper_parameters"].pop("word_to_idx"), "lacks the hyperparameter 'word_to_idx'"),
    (lambda c: c["state_dict"].pop("model.b_vocab"), 'Missing key(s) in state_dict: "b_vocab"'),
    (lambda c: c["state_dict"].__setitem__("model.Wh", torch.zeros(3, 3)), "size mismatch for Wh"),
])  # fmt: skip
def test_damaged_checkpoints_are_checkpoint_errors(trained, tmp_path, damage, message):
    checkpoint = torch.load(trained[1], weights_only=True)
    damage(checkpoint)
    checkpoint["tensor_sha256"] = tensor_checksum(checkpoint)  # consistent, so the structure is what is checked
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    with pytest.raises(evaluate.CheckpointError, match=re.escape(message)):
        evaluate.load_model(tmp_path / "damaged.ckpt")


def test_pictures_are_written(tmp_path):
    scene = {
        "setting": "beach",
        "relation": None,
        "objects": [
            {"noun": "dog", "shape": "animal", "colour": "red", "size": "small", "count": 1, "positions": [[0.4, 0.3]]}
        ],
    }
    grid = caption_grid(
        [
            (scene, "a red dog on a beach", "a small red dog on the sand"),
            ("https://unreachable.invalid/x.jpg", "a cat", "a cat on a mat"),
        ],
        tmp_path / "g.png",
    )
    assert grid.stat().st_size > 10_000
    plot = plot_loss_history(list(range(100, 0, -1)), tmp_path / "loss.png", steps_per_epoch=10)
    assert plot.stat().st_size > 10_000
