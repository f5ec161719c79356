"""train.py end to end on a small folder in cs231n's layout (seconds, not minutes)."""

import re
from pathlib import Path

import pytest
import torch

import train
from caption_torch.models.registry import DECODERS

SMALL = ["--hidden-dim", "32", "--wordvec-dim", "16", "--accelerator", "cpu", "--devices", "1"]


def run_train(capsys, *args):
    assert train.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_overfit_prints_seed_lines_plot_and_samples(coco_folder, tmp_path, capsys):
    out = run_train(
        capsys,
        "--data-dir",
        coco_folder,
        "--overfit",
        "20",
        "--batch-size",
        "10",
        "--epochs",
        "6",
        "--log-dir",
        tmp_path,
        *SMALL,
    )
    iterations = re.findall(r"\(Iteration (\d+) / 12\) loss: ([\d.]+)", out)
    assert [int(i) for i, _ in iterations] == [1, 11, 12]
    losses = [float(x) for _, x in iterations]
    assert losses[-1] < losses[0]
    assert out.count("\ntrain\n") == 2 and out.count("\nval\n") == 2 and "GT:     <START>" in out
    assert "image:  http://example.org/" in out
    plot = Path(re.search(r"loss plot: (\S+)", out).group(1))
    assert plot.is_file() and plot.stat().st_size > 10_000
    assert Path(re.search(r"checkpoint: (\S+)", out).group(1)).name == "last.ckpt"


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_true_precisions_train_and_print_samples(coco_folder, tmp_path, capsys, precision):
    # Lightning converts the model (float64, bf16); the samples printed after training read float32 features.
    args = ["--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", "1"]
    out = run_train(capsys, *args, "--precision", precision, "--log-dir", tmp_path, *SMALL)
    assert out.count("  sample: ") == 4 and "final training loss: " in out


def test_full_run_reports_bleu_and_resumes(coco_folder, tmp_path, capsys):
    args = ["--data-dir", coco_folder, "--batch-size", "8", "--log-dir", tmp_path, *SMALL]
    out = run_train(capsys, *args, "--epochs", "1")
    for n in (1, 2, 3, 4):
        value = float(re.search(rf"BLEU-{n}: ([\d.]+)", out).group(1))
        assert 0.0 <= value <= 1.0
    last = Path(re.search(r"checkpoint: (\S+)", out).group(1))
    first_state = torch.load(last, weights_only=False)
    assert first_state["epoch"] == 0 and first_state["global_step"] == 5

    out = run_train(capsys, *args, "--epochs", "2", "--resume")
    state = torch.load(Path(re.search(r"checkpoint: (\S+)", out).group(1)), weights_only=False)
    assert state["global_step"] == 10  # continued from step 5, not restarted
    lr = state["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(5e-3 * 0.9**2)

    out = run_train(capsys, *args, "--epochs", "2", "--resume")  # already there: says so, names no new file
    assert re.search(r"nothing to train: \S+last.ckpt has already completed --epochs 2", out)
    assert "checkpoint: " not in out


def test_bad_flags_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        train.main(["--overfit", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_fast_dev_run_takes_one_batch_of_each_kind_and_writes_nothing(coco_folder, tmp_path, capsys, decoder):
    sizes = SMALL[2:] if decoder == "transformer" else SMALL  # the Transformer has no --hidden-dim
    flags = ("--data-dir", coco_folder, "--model", decoder, "--fast-dev-run", "--log-dir", tmp_path, *sizes)
    out = run_train(capsys, *flags)
    assert out.strip().endswith(f"fast dev run: one training and one validation batch of --model {decoder} ran")
    assert "(Iteration 1 / 1) loss:" in out
    assert not list(tmp_path.rglob("*.ckpt"))
