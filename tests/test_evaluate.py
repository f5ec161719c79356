"""python -m caption_torch.evaluate: checkpoint loading, mismatch errors, the COCO table, JSON, --compare, pictures."""

import json
import re
import shutil

import pytest
import torch
from conftest import write_coco_folder

import train
from caption_torch import evaluate
from caption_torch.cli import evaluate as evaluation_run
from caption_torch.data.protocol import ImageSource
from caption_torch.evaluation.plots import caption_grid, plot_loss_history
from caption_torch.training.checkpointing import tensor_checksum


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


def run_evaluate(ckpt, folder, tmp_path, *flags):
    """evaluate.main without METEOR (its java start is tested once, in test_metrics); returns the exit code."""
    return evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(folder), "--jsonl", str(tmp_path / "c.jsonl"),
                          "--no-meteor", *map(str, flags)])  # fmt: skip


def printed_scores(out):
    return dict(re.findall(r"^(BLEU-\d|METEOR|ROUGE-L|CIDEr-D): (\S+)$", out, re.M))


def test_evaluate_prints_the_coco_table_and_writes_captions_and_json(trained, tmp_path, capsys):
    folder, ckpt = trained
    jsonl, grid, table = tmp_path / "caps.jsonl", tmp_path / "grid.png", tmp_path / "table.json"
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
            "--json",
            str(table),
            "--no-meteor",
            "--show",
            "4",
            "--out",
            str(grid),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    names = re.findall(r"^(BLEU-\d|METEOR|ROUGE-L|CIDEr-D): (?:\d+\.\d{4}|n/a)$", out, re.M)
    assert names == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]  # the COCO order
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 6 and records[0]["url"].startswith("http://example.org/val/")
    assert len(records[0]["references"]) == 3 and isinstance(records[0]["generated"], str)
    summary = json.loads(table.read_text())
    assert summary["images"] == 6 and len(summary["runs"]) == 1 and summary["runs"][0]["beam_size"] == 3
    scores = summary["runs"][0]["scores"]
    assert list(scores) == list(printed_scores(out)) and scores["METEOR"] is None
    assert {name: f"{value:.4f}" for name, value in scores.items() if value is not None} == {
        name: value for name, value in printed_scores(out).items() if value != "n/a"
    }
    assert grid.stat().st_size > 10_000  # URLs are unreachable here: panels show the URL instead


def test_two_runs_show_both_captions_of_the_same_images(trained, tmp_path, capsys, monkeypatch):
    folder, ckpt = trained
    drawn = {}
    monkeypatch.setattr(evaluation_run, "caption_grid",
                        lambda panels, path, title: drawn.update(panels=panels, title=title))  # fmt: skip
    assert run_evaluate(ckpt, folder, tmp_path, "--compare-beam-size", "2", "--show", "3", "--seed", "1") == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert drawn["title"] == "val images. A: rnn cross-entropy, greedy; B: rnn cross-entropy, beam 2"
    assert len(drawn["panels"]) == 3
    for source, ((label_a, first), (label_b, second)), reference in drawn["panels"]:
        assert (label_a, label_b) == ("A", "B")
        record = next(r for r in records if r["url"] == source.url)  # the same image in both runs
        assert (first, second, reference) == (record["generated"], record["compared"]["generated"],
                                              record["references"][0])  # fmt: skip


def test_scores_equal_pycocoevalcap_on_the_written_captions(trained, tmp_path, capsys):
    folder, ckpt = trained
    assert run_evaluate(ckpt, folder, tmp_path, "--beam-size", "2") == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    gts = {i: record["references"] for i, record in enumerate(records)}
    res = {i: [record["generated"]] for i, record in enumerate(records)}
    bleu, per_image_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = pytest.importorskip("pycocoevalcap.rouge.rouge").Rouge().compute_score(gts, res)
    cider, per_image_cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider().compute_score(gts, res)
    scores = json.loads((tmp_path / "c.scores.json").read_text())["runs"][0]["scores"]
    assert [scores[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-9)
    assert scores["ROUGE-L"] == pytest.approx(rouge, abs=1e-9) and scores["CIDEr-D"] == pytest.approx(cider, abs=1e-9)
    assert [r["BLEU-4"] for r in records] == pytest.approx(per_image_bleu[3], abs=1e-9)
    assert [r["CIDEr-D"] for r in records] == pytest.approx(list(per_image_cider), abs=1e-9)


def test_meteor_without_java_is_a_notice_not_an_error(trained, tmp_path, capsys, monkeypatch):
    folder, ckpt = trained
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(folder), "--jsonl", str(tmp_path / "c.jsonl")]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("notice: METEOR skipped: java is not on the PATH") == 1
    assert "METEOR: n/a" in captured.out and re.search(r"^CIDEr-D: \d", captured.out, re.M)


def test_greedy_and_beam_one_score_the_same(trained, tmp_path, capsys):
    folder, ckpt = trained
    outputs = []
    for args in (["--method", "greedy"], ["--method", "beam", "--beam-size", "1"]):
        run_evaluate(ckpt, folder, tmp_path, *args)
        outputs.append(printed_scores(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 7


def test_compare_greedy_with_beam_equals_two_separate_runs(trained, tmp_path, capsys):
    folder, ckpt = trained
    alone = []
    for beam in ("1", "3"):
        assert run_evaluate(ckpt, folder, tmp_path, "--beam-size", beam) == 0
        alone.append(printed_scores(capsys.readouterr().out))
    assert alone[0] != alone[1]  # the two decodings differ, so the columns can be told apart
    assert run_evaluate(ckpt, folder, tmp_path, "--compare-beam-size", "3", "--html", tmp_path / "page") == 0
    out = capsys.readouterr().out
    assert f"A: {ckpt}, greedy decoding" in out and f"B: {ckpt}, beam 3 decoding" in out
    rows = dict(
        (m[0], m[1:]) for m in re.findall(r"^(BLEU-\d|METEOR|ROUGE-L|CIDEr-D) +(\S+) +(\S+) *(\S*)$", out, re.M)
    )
    assert list(rows) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
    for name, (first, second, difference) in rows.items():
        assert (first, second) == (alone[0][name], alone[1][name])
        if first != "n/a":
            assert float(difference) == pytest.approx(float(second) - float(first), abs=2e-4)
    summary = json.loads((tmp_path / "c.scores.json").read_text())
    assert [(r["method"], r["beam_size"]) for r in summary["runs"]] == [("greedy", 1), ("beam", 3)]
    record = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert set(record["compared"]) == {"generated", "CIDEr-D", "BLEU-4"}
    assert (tmp_path / "page" / "index.html").is_file() and (tmp_path / "page" / "data.js").is_file()


def test_compare_two_checkpoints_and_refuse_a_run_compared_with_itself(trained, tmp_path, capsys):
    folder, ckpt = trained
    other = tmp_path / "other.ckpt"
    other.write_bytes(ckpt.read_bytes())
    assert run_evaluate(ckpt, folder, tmp_path, "--compare", other) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(?:BLEU-\d|ROUGE-L|CIDEr-D) +(\S+) +(\S+) +(\S+)$", out, re.M)
    assert len(rows) == 6 and all(first == second and difference == "+0.0000" for first, second, difference in rows)
    assert run_evaluate(ckpt, folder, tmp_path, "--compare", ckpt) == 2
    assert capsys.readouterr().err.startswith("error: --compare and --compare-* describe the same run as --ckpt")
    assert run_evaluate(ckpt, folder, tmp_path, "--compare", tmp_path / "none.ckpt") == 2
    assert f"error: checkpoint {tmp_path / 'none.ckpt'} does not exist" in capsys.readouterr().err


def test_checkpoint_that_does_not_fit_the_data(trained, tmp_path, capsys):
    _, ckpt = trained
    other = write_coco_folder(tmp_path / "other", pca_dim=64)
    assert evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(other)]) == 2
    assert "expects 512-d features but the data has 64-d" in capsys.readouterr().err


def test_output_folders_are_checked_before_captioning(trained, tmp_path, capsys):
    folder, ckpt = trained
    for flags in (["--jsonl", tmp_path / "no" / "c.jsonl"], ["--show", "2", "--out", tmp_path / "no" / "g.png"],
                  ["--json", tmp_path / "no" / "t.json"]):  # fmt: skip
        assert evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(folder), *map(str, flags)]) == 2
        captured = capsys.readouterr()
        assert f"error: cannot write {tmp_path / 'no'}" in captured.err and "BLEU" not in captured.out
    (tmp_path / "page.html").write_text("")
    assert evaluate.main(["--ckpt", str(ckpt), "--data-dir", str(folder), "--html", str(tmp_path / "page.html")]) == 2
    assert capsys.readouterr().err == f"error: --html {tmp_path / 'page.html'} is a file, not a folder\n"


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
    with pytest.raises(evaluate.CheckpointError, match=r"is not a file torch.save wrote \(it begins with b'not '\)"):
        evaluate.load_model(bad)
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(b"\x80\x02 half a pickle")
    with pytest.raises(evaluate.CheckpointError, match="cannot be loaded safely: UnpicklingError"):
        evaluate.load_model(torn)


@pytest.mark.parametrize("damage, message", [
    (lambda c: c["hyper_parameters"].pop("word_to_idx"), "lacks the hyperparameter 'word_to_idx'"),
    (lambda c: c["state_dict"].pop("model.b_vocab"), "state_dict['model.b_vocab']: expected a tensor of shape"),
    (lambda c: c["state_dict"].__setitem__("model.Wh", torch.zeros(3, 3)), "state_dict['model.Wh']: expected shape ("),
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
            (ImageSource(scene=scene), "a red dog on a beach", "a small red dog on the sand"),
            (ImageSource(url="https://unreachable.invalid/x.jpg"), "a cat", "a cat on a mat"),
        ],
        tmp_path / "g.png",
    )
    assert grid.stat().st_size > 10_000
    two = caption_grid(
        [(ImageSource(scene=scene), [("A", "a dog"), ("B", "a red dog on a beach")], "a small red dog")],
        tmp_path / "2.png",
    )
    assert two.stat().st_size > 5_000
    plot = plot_loss_history(list(range(100, 0, -1)), tmp_path / "loss.png", steps_per_epoch=10)
    assert plot.stat().st_size > 10_000


def test_a_transformer_checkpoint_with_beam_search_and_too_long_captions(trained, tmp_path, capsys):
    """Every decoder evaluates; asking a Transformer for more words than its positions is one error line."""
    folder, _ = trained
    flags = ["--data-dir", folder, "--overfit", "10", "--batch-size", "5", "--epochs", "1", "--model", "transformer",
             "--wordvec-dim", "16", "--accelerator", "cpu", "--log-dir", tmp_path]  # fmt: skip
    assert train.main([str(flag) for flag in flags]) == 0
    ckpt = next(tmp_path.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    capsys.readouterr()
    assert run_evaluate(ckpt, folder, tmp_path, "--beam-size", "2", "--max-length", "12") == 0
    assert "CIDEr-D" in capsys.readouterr().out
    assert run_evaluate(ckpt, folder, tmp_path, "--max-length", "31") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --max-length 31:") and "max_length=30" in err and len(err.splitlines()) == 1
