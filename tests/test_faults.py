"""Through faults: resume after SIGKILL, atomic checkpoint writes, bad input stopped in one line, same seed same curve.

Errors already covered where they are raised (tests/test_coco.py, test_data.py,
test_model.py, test_functional.py, test_evaluate.py) are checked here only as
train.py reports them: exit code 2 and one ``error: ...`` line, no traceback.
"""

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import train
from caption_torch import evaluate
from caption_torch.data import cs231n as coco
from caption_torch.data.synthetic.generate import ensure_synthetic_dataset
from caption_torch.training.callbacks import LossHistory
from caption_torch.training.checkpointing import AtomicCheckpointIO, CheckpointError, load_model, tensor_checksum
from caption_torch.training.system import CaptioningSystem

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--hidden-dim", "32", "--wordvec-dim", "16", "--accelerator", "cpu", "--devices", "1"]


def checkpoint_of(log_dir: Path, version: int) -> Path:
    return log_dir / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"


# --- resume after a crash --------------------------------------------------------------------------------------

EPOCHS = 200  # one step per epoch: 200 steps, a checkpoint after every one, a few seconds in all


def test_resume_after_sigkill_restores_steps_optimizer_and_schedule(coco_folder, tmp_path):
    args = ["--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", EPOCHS,
            "--lr-decay", "0.99", "--checkpoint-every", "1", *SMALL, "--log-dir", tmp_path]  # fmt: skip
    command = [sys.executable, str(ROOT / "train.py"), *map(str, args)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    crashed_at = checkpoint_of(tmp_path, 0)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            # os.replace makes the file swap atomic, so reading it while training goes on is safe.
            if crashed_at.is_file() and torch.load(crashed_at, weights_only=True)["global_step"] >= 3:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, f"train.py ended before it was killed:\n{stderr[-2000:]}"

    crashed = torch.load(crashed_at, weights_only=True)  # whole and loadable, whenever the kill came
    assert 3 <= crashed["global_step"] < EPOCHS
    assert len(crashed["callbacks"]["LossHistory"]["losses"]) == crashed["global_step"]

    resumed = subprocess.run([*command, "--resume", str(crashed_at)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stderr
    final = torch.load(checkpoint_of(tmp_path, 1), weights_only=True)
    assert final["global_step"] == EPOCHS  # continued, neither restarted nor repeated
    # Adam's own step count continued from the checkpoint: its moments were restored, not rebuilt.
    assert all(state["step"].item() == EPOCHS for state in final["optimizer_states"][0]["state"].values())
    assert final["lr_schedulers"][0]["last_epoch"] == EPOCHS
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(5e-3 * 0.99**EPOCHS, rel=1e-6)
    losses = final["callbacks"]["LossHistory"]["losses"]
    assert len(losses) == EPOCHS and losses[: crashed["global_step"]] == crashed["callbacks"]["LossHistory"]["losses"]
    assert losses[-1] < losses[0]


def test_checkpoint_between_loss_flushes_keeps_every_loss(capsys):
    # Losses are copied to the host every 10 steps; a checkpoint after step 3 (--checkpoint-every) needs all 3.
    history = LossHistory(print_every=10)
    for step, loss in enumerate([5.0, 4.0, 3.0], start=1):
        strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision)  # one process
        trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=100, is_global_zero=True,
                                  progress_bar_callback=None, strategy=strategy)  # fmt: skip
        history.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, step - 1)
    assert capsys.readouterr().out == "(Iteration 1 / 100) loss: 5.000000\n"
    assert history.state_dict() == {"losses": [5.0, 4.0, 3.0], "rewards": []}
    resumed = LossHistory()
    resumed.load_state_dict(history.state_dict())
    assert resumed.losses == [5.0, 4.0, 3.0]


# --- atomic checkpoint writes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_the_old_checkpoint_and_no_partial_file(tmp_path, monkeypatch, failing):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, target)
    before = target.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": torch.tensor(2), "big": torch.zeros(10_000)}, target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["step"].item() == 1


def test_process_killed_mid_write_leaves_the_old_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    # A child saves once, then is SIGKILLed inside its second save, after the bytes hit the temporary file.
    script = textwrap.dedent(f"""
        import os, signal, torch
        from caption_torch.training.checkpointing import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"step": torch.tensor(1)}}, {str(target)!r})
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        io.save_checkpoint({{"step": torch.tensor(2), "big": torch.zeros(100_000)}}, {str(target)!r})
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert torch.load(target, weights_only=True)["step"].item() == 1
    (leftover,) = [p for p in tmp_path.iterdir() if p != target]  # the documented leftover, never the target
    assert leftover.name.startswith(".last.ckpt.") and leftover.name.endswith(".partial")


# --- bad input, loudly -----------------------------------------------------------------------------------------


def run_train(capsys, *args) -> tuple[int, str]:
    """train.main's exit code and its stderr."""
    code = train.main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *phrases: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def _set_features(folder: Path, split: str, features: np.ndarray) -> None:
    with h5py.File(folder / f"{split}2014_vgg16_fc7_pca.h5", "w") as f:
        f["features"] = features


def _edit_captions(folder: Path, edit) -> None:
    with h5py.File(folder / "coco2014_captions.h5", "a") as f:
        edit(f)


def _empty_val(f) -> None:
    del f["val_captions"], f["val_image_idxs"]
    f["val_captions"] = np.zeros((0, 17), dtype=np.int32)
    f["val_image_idxs"] = np.zeros((0,), dtype=np.int32)


def _only_tokens(f, split: str, tokens: list[int]) -> None:
    """Every caption of a split becomes ``tokens`` then <NULL>: no word at all."""
    captions = np.zeros_like(f[f"{split}_captions"][:])
    captions[:, : len(tokens)] = tokens
    f[f"{split}_captions"][:] = captions


def _drop_end(f, split: str) -> None:
    captions = f[f"{split}_captions"][:]
    captions[captions == 2] = 0  # <END> becomes <NULL>
    f[f"{split}_captions"][:] = captions


def _poison_row(path: Path, row: int) -> None:
    with h5py.File(path, "a") as f:
        f["features"][row] = np.nan


def _drop_last_line(path: Path) -> None:
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-1]))


BAD_DATA = {
    "val features narrower than train": (lambda d: _set_features(d, "val", np.zeros((6, 256), np.float32)),
                                         ["val2014_vgg16_fc7_pca.h5: features", "feature width D = 512", "found 256"]),
    "integer features": (lambda d: _set_features(d, "train", np.zeros((12, 512), np.int32)),
                         ["train2014_vgg16_fc7_pca.h5", "float dataset 'features'", "dtype int32"]),
    "caption id outside the vocabulary": (lambda d: _edit_captions(d, lambda f: f["train_captions"].__setitem__(
                                              (0, 3), 999)), ["id 999 in train_captions", "[0, 13)"]),
    "caption without <START>": (lambda d: _edit_captions(d, lambda f: f["val_captions"].__setitem__((2, 0), 4)),
                                ["1 val captions do not begin with <START>"]),
    "empty split": (lambda d: _edit_captions(d, _empty_val),
                    ["val_captions", "Nc >= 1", "found shape (0, 17): an empty split"]),
    # Only the samples printed after training read the URLs: they must still stop the run before it.
    "missing URL file": (lambda d: (d / "val2014_urls.txt").unlink(), ["val2014_urls.txt", "no such file"]),
    "URL file one line short": (lambda d: _drop_last_line(d / "train2014_urls.txt"),
                                ["train2014_urls.txt", "expected 12 lines", "found 11 lines"]),
    # Data that cannot train or be scored, refused before training instead of giving loss 0 or NaN scores.
    "train captions without words": (lambda d: _edit_captions(d, lambda f: _only_tokens(f, "train", [1, 2])),
                                     ["no train caption holds a word", "nothing to learn"]),
    "empty val references": (lambda d: _edit_captions(d, lambda f: _only_tokens(f, "val", [1, 2])),
                             ["no val caption holds a word", "nothing to score"]),
    "no <END> in a split": (lambda d: _edit_captions(d, lambda f: _drop_end(f, "val")),
                            ["no val caption holds <END> (id 2)", "never stops"]),
    "NaN val features": (lambda d: _set_features(d, "val", np.full((6, 512), np.nan, np.float32)),
                         ["val2014_vgg16_fc7_pca.h5", "NaN or inf in row 0", "6 rows"]),
    "one NaN train image": (lambda d: _poison_row(d / "train2014_vgg16_fc7_pca.h5", 3),
                            ["train2014_vgg16_fc7_pca.h5", "NaN or inf in row 3", "(1 rows"]),
    "--data-dir is a file": (lambda d: (shutil.rmtree(d), d.write_text("x")),
                             ["expected a coco_captioning folder, found a file"]),
    "corrupt scenes file": (lambda d: (d / "val2014_scenes.json").write_text("[{"),
                            ["val2014_scenes.json", "(a JSON list of scenes), found a parse error"]),
}  # fmt: skip


def test_float64_features_are_read_as_float32(coco_folder, tmp_path, capsys):
    """Documented behaviour: any float dtype is accepted and converted to float32."""
    with h5py.File(coco_folder / "train2014_vgg16_fc7_pca.h5", "r") as f:
        features = f["features"][:].astype(np.float64)
    _set_features(coco_folder, "train", features)
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", "1",
                          *SMALL, "--log-dir", tmp_path)  # fmt: skip
    assert code == 0, err


def test_overfit_larger_than_the_split(coco_folder, tmp_path, capsys):
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "37", *SMALL, "--log-dir", tmp_path)
    assert_one_line_error(code, err, "asked for 37 training captions but the split has only 36")


@pytest.mark.parametrize("flag, value, message", [
    ("--hidden-dim", "0", "must be a positive integer"),
    ("--wordvec-dim", "-4", "must be a positive integer"),
    ("--batch-size", "0", "must be a positive integer"),
    ("--epochs", "0", "must be a positive integer"),
    ("--max-val-images", "0", "must be a positive integer"),
    ("--checkpoint-every", "0", "must be a positive integer"),
    ("--num-nodes", "0", "must be a positive integer"),
    ("--lr", "0", "must be positive"),
    ("--lr", "nan", "must be positive"),
    ("--lr", "inf", "must be positive and finite"),
    ("--lr-decay", "-0.5", "must be positive"),
    ("--devices", "0", "a positive count, -1 (all) or indices like 0,1; got '0'"),
    ("--devices", "abc", "got 'abc'"),
    ("--devices", "-2", "got '-2'"),
    ("--devices", "9" * 40, "a positive count"),
    ("--num-workers", "-1", "must be in [0, "),
    ("--num-workers", "100000", "8 per CPU core of this machine"),
    ("--seed", "-5", "must be in [0, 4294967295], got -5"),
    ("--seed", str(2**32), "must be in [0, 4294967295]"),
    ("--seed", "1" * 5000, "must be an integer"),
    ("--epochs", str(2**31), "must be at most 2147483647"),
    ("--lr", "1e-400", "must be positive"),
    ("--lr-decay", "inf", "must be positive and finite"),
    ("--batch-size", "ten", "must be an integer, got 'ten'"),
])  # fmt: skip
def test_non_positive_sizes_are_refused_before_anything_runs(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit:
        train.main([flag, value])
    assert message in capsys.readouterr().err
    assert exit.value.code == 2  # argparse's usage error


@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume found no"),
    (["--full-features"], "the embedded dataset has only the 512-d fc7-PCA ones"),
])  # fmt: skip
def test_inconsistent_flags_are_one_error_line_and_exit_2(capsys, tmp_path, args, message):
    code, err = run_train(capsys, *args, "--log-dir", tmp_path)
    assert_one_line_error(code, err, message)


def test_lr_decay_above_one(coco_folder, tmp_path, capsys):
    code, err = run_train(capsys, "--data-dir", coco_folder, "--lr-decay", "1.5", *SMALL, "--log-dir", tmp_path)
    assert_one_line_error(code, err, "--lr-decay must be in (0, 1], got 1.5")


@pytest.mark.parametrize("flags, message", [
    (["--accelerator", "cpu", "--devices", "-1"], "--accelerator cpu --devices -1"),
    (["--accelerator", "tpu-ish"], "invalid accelerator name"),
    pytest.param(["--accelerator", "gpu"], "No supported gpu backend found",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")),
])  # fmt: skip
def test_hardware_lightning_cannot_provide(coco_folder, tmp_path, capsys, flags, message):
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", "--hidden-dim", "8",
                          "--wordvec-dim", "8", *flags, "--log-dir", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, message)


def test_huge_learning_rate_stops_training_and_names_the_step(coco_folder, tmp_path, capsys):
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "20", "--batch-size", "10", "--epochs", "3",
                          "--lr", "1e30", *SMALL, "--log-dir", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, "training loss became", "at step 2", "lower the learning rate (--lr)")


@pytest.fixture
def trained_checkpoint(coco_folder, tmp_path, capsys):
    """last.ckpt of a one-epoch run with H=32, W=16 on the 512-d features."""
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", "1",
                          *SMALL, "--log-dir", tmp_path / "first")  # fmt: skip
    assert code == 0, err
    return checkpoint_of(tmp_path / "first", 0)


@pytest.mark.parametrize("change, phrases", [
    (["--hidden-dim", "48"], ["was trained with --hidden-dim 32 but this run has 48"]),
    (["--cell", "lstm"], ["was trained with --model rnn but this run has lstm"]),
    (["--model", "transformer"], ["was trained with --model rnn but this run has transformer"]),
    (["--full-features"], ["expects 512-d features but the data has 4096-d"]),
])  # fmt: skip
def test_resume_from_a_checkpoint_of_another_model(coco_folder, tmp_path, capsys, trained_checkpoint, change, phrases):
    args = ["--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", "2", *SMALL]
    code, err = run_train(capsys, *args, *change, "--log-dir", tmp_path / "second", "--resume", trained_checkpoint)
    assert_one_line_error(code, err, *phrases)


def test_resume_from_a_missing_or_corrupt_checkpoint(coco_folder, tmp_path, capsys):
    args = ["--data-dir", coco_folder, "--overfit", "10", *SMALL, "--log-dir", tmp_path]
    code, err = run_train(capsys, *args, "--resume", tmp_path / "gone.ckpt")
    assert_one_line_error(code, err, "gone.ckpt does not exist")
    (tmp_path / "torn.ckpt").write_bytes(b"PK\x03\x04 half a zip")
    code, err = run_train(capsys, *args, "--resume", tmp_path / "torn.ckpt")
    assert_one_line_error(code, err, "torn.ckpt cannot be loaded safely")
    code, err = run_train(capsys, *args, "--resume")
    assert_one_line_error(code, err, "--resume found no", "last.ckpt")


# --- reproducible ----------------------------------------------------------------------------------------------


def loss_curve(capsys, folder: Path, log_dir: Path, *extra) -> list[float]:
    code, err = run_train(capsys, "--data-dir", folder, "--batch-size", "8", "--epochs", "2", *SMALL,
                          "--log-dir", log_dir, *extra)  # fmt: skip
    assert code == 0, err
    return torch.load(checkpoint_of(log_dir, 0), weights_only=True)["callbacks"]["LossHistory"]["losses"]


def test_same_seed_same_loss_curve(coco_folder, tmp_path, capsys):
    first = loss_curve(capsys, coco_folder, tmp_path / "a")
    assert len(first) == 10 and first == loss_curve(capsys, coco_folder, tmp_path / "b")
    assert first != loss_curve(capsys, coco_folder, tmp_path / "c", "--seed", "1")  # the comparison can fail

    with_workers = loss_curve(capsys, coco_folder, tmp_path / "d", "--num-workers", "2")
    assert with_workers == loss_curve(capsys, coco_folder, tmp_path / "e", "--num-workers", "2")
    # Documented: workers give the same batches (the whole first epoch matches); persistent workers draw the
    # global RNG differently between epochs, so later epochs are shuffled differently than with --num-workers 0.
    assert with_workers[:5] == first[:5]


# --- signals: a clean stop that can be resumed -----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_last_checkpoint_exits_nonzero_and_resume_reaches_the_same_steps(coco_folder, tmp_path, signum):
    # Two steps per epoch, so the stop usually falls mid-epoch: the hard case for resuming.
    epochs = 60
    args = ["--data-dir", coco_folder, "--overfit", "10", "--batch-size", "5", "--epochs", epochs, *SMALL,
            "--log-dir", tmp_path]  # fmt: skip
    command = [sys.executable, str(ROOT / "train.py"), *map(str, args)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # wait until training is under way
            if line.startswith("(Iteration 11 /"):
                break
        process.send_signal(signum)
        sent = time.monotonic()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert time.monotonic() - sent < 30
    assert process.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if line.startswith("stopped by ")]
    saved = checkpoint_of(tmp_path, 0)
    assert len(stopped) == 1 and f"stopped by {signal.Signals(signum).name} at step " in stopped[0], err[-2000:]
    assert f"saved {saved}; to continue, run the same command with --resume {saved}" in stopped[0]
    step = int(stopped[0].split(" at step ")[1].split(";")[0])
    state = torch.load(saved, weights_only=True)
    assert state["global_step"] == step and 11 <= step < 2 * epochs  # the state the line names, saved at the stop

    resumed = subprocess.run([*command, "--resume", str(saved)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(checkpoint_of(tmp_path, 1), weights_only=True)
    assert final["global_step"] == 2 * epochs  # the same total as an uninterrupted run
    assert final["callbacks"]["LossHistory"]["losses"][:step] == state["callbacks"]["LossHistory"]["losses"]


def test_signal_before_training_stops_at_once_in_one_line(capsys, tmp_path, monkeypatch):
    def signal_while_reading_data(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train.CaptionDataModule, "prepare_data", signal_while_reading_data)
    code = train.main(["--log-dir", str(tmp_path)])
    assert code == 128 + signal.SIGTERM
    stopped = "stopped by SIGTERM before training began; no checkpoint was saved by this run, so start it again"
    assert capsys.readouterr().err.strip().endswith(stopped)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


# --- non-finite weights never reach a checkpoint ---------------------------------------------------------------


def test_non_finite_weights_stop_the_run_and_keep_the_previous_checkpoint(coco_folder, tmp_path, capsys, monkeypatch):
    def poison_an_unused_word(self, outputs, batch, batch_idx):
        # "red" (id 11) is in no caption: its NaN embedding leaves every loss finite, so only the weights tell.
        if self.trainer.global_step == 3:
            self.model.W_embed.data[11] = float("nan")

    monkeypatch.setattr(CaptioningSystem, "on_train_batch_end", poison_an_unused_word, raising=False)
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", "9",
                          "--checkpoint-every", "1", *SMALL, "--log-dir", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, "weights became non-finite by step 3", "W_embed", "previous checkpoint is kept")
    kept = torch.load(checkpoint_of(tmp_path, 0), weights_only=True)
    assert kept["global_step"] == 3 and all(torch.isfinite(t).all() for t in kept["state_dict"].values())


def test_a_nan_loss_between_loss_checks_stops_before_the_save(coco_folder, tmp_path, capsys):
    # Losses are checked every 10 steps and at every save: the step-2 NaN is caught by the step-2 save.
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "20", "--batch-size", "10", "--epochs", "3",
                          "--lr", "1e30", "--checkpoint-every", "1", *SMALL, "--log-dir", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, "training loss became", "at step 2")
    assert torch.load(checkpoint_of(tmp_path, 0), weights_only=True)["global_step"] == 1


def test_checkpoint_io_refuses_non_finite_weights(tmp_path):
    target = tmp_path / "last.ckpt"
    with pytest.raises(FloatingPointError, match="model.Wh holds NaN or inf"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"model.Wh": torch.tensor([1.0, float("inf")])}}, target)
    assert not target.exists()


# --- --resume with new optimisation flags ----------------------------------------------------------------------


def test_resume_applies_and_records_a_new_lr_decay_and_epochs(coco_folder, tmp_path, capsys, trained_checkpoint):
    args = ["--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", *SMALL, "--log-dir", tmp_path / "more"]
    code, err = run_train(capsys, *args, "--epochs", "3", "--lr", "1e-3", "--lr-decay", "0.5",
                          "--resume", trained_checkpoint)  # fmt: skip
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if line.startswith("resuming with ")]
    assert line == ("resuming with --lr 0.001 (was 0.005), --lr-decay 0.5 (was 0.95), --epochs 3 (was 1); "
                    "learning rate now 0.0005 after 1 epochs")  # fmt: skip
    final = torch.load(checkpoint_of(tmp_path / "more", 0), weights_only=True)
    assert final["global_step"] == 3
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5**3)
    assert final["callbacks"]["ResumableSettings"] == {"lr": 1e-3, "lr_decay": 0.5, "epochs": 3}
    assert final["hyper_parameters"]["lr"] == 1e-3 and final["hyper_parameters"]["lr_decay"] == 0.5


# --- damaged files ---------------------------------------------------------------------------------------------


def rot_tensor_bytes(path: Path) -> None:
    """Invert 100 bytes in the middle of the largest stored tensor, as a failing disk would; the zip still opens."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as file:
        file.seek(entry.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        start = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        file.seek(start)
        original = file.read(100)
        file.seek(start)
        file.write(bytes(byte ^ 0xFF for byte in original))


def test_rotted_checkpoint_is_refused_by_evaluate_and_resume(coco_folder, tmp_path, capsys, trained_checkpoint):
    rot_tensor_bytes(trained_checkpoint)
    torch.load(trained_checkpoint, weights_only=True)  # still loads: only the checksum can tell
    code = evaluate.main(["--ckpt", str(trained_checkpoint), "--data-dir", str(coco_folder)])
    assert_one_line_error(code, capsys.readouterr().err, f"checkpoint {trained_checkpoint} is damaged")
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", *SMALL, "--log-dir", tmp_path / "r",
                          "--resume", trained_checkpoint)  # fmt: skip
    assert_one_line_error(code, err, f"checkpoint {trained_checkpoint} is damaged")
    assert not (tmp_path / "r" / "lightning_logs").exists()  # refused before any training


def test_empty_checkpoint_says_why(tmp_path):
    (tmp_path / "empty.ckpt").touch()
    with pytest.raises(CheckpointError, match="empty.ckpt is an empty file"):
        load_model(tmp_path / "empty.ckpt")


def test_damaged_embedded_cache_is_regenerated_with_one_line(tmp_path, capsys):
    folder = ensure_synthetic_dataset("tiny", cache_dir=tmp_path)
    captions = folder / "coco2014_captions.h5"
    good = captions.read_bytes()
    captions.write_bytes(good[:1000] + bytes(100) + good[1100:])
    capsys.readouterr()
    assert ensure_synthetic_dataset("tiny", cache_dir=tmp_path) == folder
    err = capsys.readouterr().err
    assert err == (f"The cached embedded dataset in {folder} is damaged "
                   "(coco2014_captions.h5 does not match its checksum); regenerating it\n")  # fmt: skip
    assert captions.read_bytes() == good
    assert ensure_synthetic_dataset("tiny", cache_dir=tmp_path) == folder and capsys.readouterr().err == ""
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # the damaged copy is gone


# --- errors a user causes: one line, before the expensive work -------------------------------------------------


def test_log_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    code, err = run_train(capsys, "--log-dir", tmp_path / "taken")
    assert_one_line_error(code, err, f"--log-dir {tmp_path / 'taken'} is a file, not a folder")


def test_full_disk_during_a_checkpoint_write(coco_folder, tmp_path, capsys, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", "1",
                          *SMALL, "--log-dir", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, "last.ckpt: cannot write the checkpoint: No space left on device")


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    def too_big(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(train.CaptionDataModule, "setup", too_big)
    code, err = run_train(capsys, "--synthetic-size", "tiny", "--log-dir", tmp_path)
    assert_one_line_error(code, err, "out of memory", "lower --batch-size")


@pytest.mark.parametrize("flag, path, message", [
    ("--out", ".", "is a folder; give a file name inside it"),
    ("--out", "grid", "has no file extension"),
    ("--jsonl", "missing/c.jsonl", "the folder"),
])  # fmt: skip
def test_evaluate_output_paths_are_checked_before_captioning(trained_checkpoint, coco_folder, tmp_path, capsys,
                                                             flag, path, message):  # fmt: skip
    code = evaluate.main(["--ckpt", str(trained_checkpoint), "--data-dir", str(coco_folder), "--show", "1",
                          flag, str(tmp_path / path)])  # fmt: skip
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.err, message, flag)
    assert "BLEU" not in captured.out


def test_some_captions_without_end_is_a_warning(coco_folder, capsys):
    splits = coco.read_captions(coco_folder)
    splits["val"].captions[0, splits["val"].captions[0] == 2] = 0
    word_to_idx, _ = coco.read_vocab(coco_folder)
    coco.check_trainable(coco_folder, splits, word_to_idx)
    expected = f"warning: {coco_folder / coco.CAPTIONS_FILE}: 1 of 18 val captions have no <END>\n"
    assert capsys.readouterr().err == expected


def test_embedded_cache_without_checksums_is_regenerated(tmp_path, capsys):
    folder = ensure_synthetic_dataset("tiny", cache_dir=tmp_path)
    info = json.loads((folder / "synthetic_info.json").read_text())
    del info["sha256"]  # as an older version wrote it
    (folder / "synthetic_info.json").write_text(json.dumps(info))
    capsys.readouterr()
    ensure_synthetic_dataset("tiny", cache_dir=tmp_path)
    assert "carries no checksums (written by an older version)" in capsys.readouterr().err
    assert "sha256" in json.loads((folder / "synthetic_info.json").read_text())


def _permission_denied_for(monkeypatch, owner, method: str, name: str) -> None:
    """Make ``owner.method`` refuse files called ``name``, as a non-root user meets them (tests may run as root)."""
    original = getattr(owner, method)

    def refuse(*args, **kwargs):
        path = Path(kwargs.get("dir") or args[0])
        if path.name == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, method, refuse)


def test_unreadable_vocabulary(coco_folder, tmp_path, capsys, monkeypatch):
    _permission_denied_for(monkeypatch, Path, "read_bytes", "coco2014_vocab.json")
    code, err = run_train(capsys, "--data-dir", coco_folder, *SMALL, "--log-dir", tmp_path)
    assert_one_line_error(code, err, "coco2014_vocab.json: expected a readable file, found Permission denied")


def test_log_dir_without_write_permission(tmp_path, capsys, monkeypatch):
    (tmp_path / "ro").mkdir()
    _permission_denied_for(monkeypatch, tempfile, "TemporaryFile", "ro")
    code, err = run_train(capsys, "--log-dir", tmp_path / "ro")
    assert_one_line_error(code, err, f"--log-dir {tmp_path / 'ro'} is not writable: Permission denied")


def test_evaluate_output_without_write_permission(trained_checkpoint, coco_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    code = evaluate.main(["--ckpt", str(trained_checkpoint), "--data-dir", str(coco_folder),
                          "--jsonl", str(tmp_path / "c.jsonl")])  # fmt: skip
    assert_one_line_error(code, capsys.readouterr().err, f"cannot write {tmp_path / 'c.jsonl'}: permission denied")


def test_signal_during_validation_keeps_the_newest_checkpoint_and_resumes(coco_folder, tmp_path, capsys, monkeypatch):
    validation_step = CaptioningSystem.validation_step

    def signal_in_second_validation(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # handled between bytecodes: the flag is set when this returns
        return validation_step(self, batch, batch_idx)

    monkeypatch.setattr(CaptioningSystem, "validation_step", signal_in_second_validation)
    args = ["--data-dir", coco_folder, "--batch-size", "8", "--epochs", "3", *SMALL, "--log-dir", tmp_path]
    code = train.main([str(a) for a in args])  # 36 captions, batches of 8: 5 steps per epoch
    saved = checkpoint_of(tmp_path, 0)
    assert code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"stopped by SIGTERM at step 10; the newest save is step 5 in {saved}; "
        f"to continue, run the same command with --resume {saved}"
    )
    assert torch.load(saved, weights_only=True)["global_step"] == 5
    monkeypatch.undo()
    code, err = run_train(capsys, *args, "--resume", saved)
    assert code == 0, err
    assert torch.load(checkpoint_of(tmp_path, 1), weights_only=True)["global_step"] == 15


def test_resume_with_more_epochs_only_says_so_and_keeps_the_schedule(coco_folder, tmp_path, capsys, trained_checkpoint):
    args = ["--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", *SMALL, "--log-dir", tmp_path / "more"]
    code, err = run_train(capsys, *args, "--epochs", "3", "--resume", trained_checkpoint)
    assert code == 0 and "resuming with --epochs 3 (was 1)\n" in err, err
    final = torch.load(checkpoint_of(tmp_path / "more", 0), weights_only=True)
    lr = 5e-3
    for _ in range(3):
        lr *= 0.95  # as ExponentialLR multiplies, epoch by epoch
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == lr


def test_checkpoint_with_non_finite_weights_is_refused_on_load(trained_checkpoint, tmp_path):
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint["state_dict"]["model.b_vocab"][0] = float("nan")  # as train.py wrote them before saves were checked
    checkpoint["tensor_sha256"] = tensor_checksum(checkpoint)
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=r"nan.ckpt holds non-finite weights \(model.b_vocab has NaN or inf\)"):
        load_model(tmp_path / "nan.ckpt")


def test_checkpoint_without_checksum_is_read_with_one_warning(trained_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    del checkpoint["tensor_sha256"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    for _ in range(2):
        load_model(tmp_path / "old.ckpt")
    assert capsys.readouterr().err.count("old.ckpt carries no checksum; its tensors cannot be verified") == 1


def test_a_bare_resume_continues_the_checkpoints_own_settings(coco_folder, tmp_path, capsys):
    """--resume alone keeps the run's --lr and --batch-size, not the preset's; --init-from beside it is refused."""
    first = ["--data-dir", coco_folder, "--batch-size", "8", "--lr", "0.001", *SMALL, "--log-dir", tmp_path]
    code, err = run_train(capsys, *first, "--epochs", "1")
    assert code == 0, err
    last = checkpoint_of(tmp_path, 0)
    code, err = run_train(capsys, "--data-dir", coco_folder, "--resume", "--epochs", "2", "--accelerator", "cpu",
                          "--devices", "1", "--log-dir", tmp_path)  # fmt: skip
    assert code == 0, err
    assert "--lr " not in err  # nothing to announce: the learning rate is the run's own
    resumed = torch.load(checkpoint_of(tmp_path, 1), weights_only=True)
    assert resumed["hyper_parameters"]["lr"] == 0.001 and resumed["hyper_parameters"]["batch_size"] == 8
    code, err = run_train(capsys, "--data-dir", coco_folder, "--resume", last, "--init-from", last, *SMALL)
    assert_one_line_error(code, err, "--init-from starts a new run", "give one of them")


def test_init_from_refuses_flags_that_build_another_model(coco_folder, tmp_path, capsys, trained_checkpoint):
    code, err = run_train(capsys, "--data-dir", coco_folder, "--init-from", trained_checkpoint, "--hidden-dim", "48",
                          "--accelerator", "cpu", "--devices", "1", "--log-dir", tmp_path / "next")  # fmt: skip
    assert_one_line_error(code, err, "was trained with --hidden-dim 32 but this run has 48")


def test_a_checkpoint_from_before_the_decoder_table_loads(coco_folder, tmp_path, capsys, trained_checkpoint):
    """Checkpoints that name their cell `cell_type` (no `decoder`) rebuild the same model."""
    from caption_torch.training.checkpointing import load_system, tensor_checksum

    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["cell_type"] = checkpoint["hyper_parameters"].pop("decoder")
    checkpoint["tensor_sha256"] = tensor_checksum(checkpoint)
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    assert load_system(old).config.decoder == "rnn"


@pytest.mark.parametrize("flags, phrase", [
    (["--model", "transformer", "--hidden-dim", "32"],
     "--hidden-dim does not apply to the transformer decoder (its sizes: --wordvec-dim, --num-heads, --num-layers, "
     "--cs231n-version)"),
    (["--model", "rnn", "--num-heads", "4", "--num-layers", "3"],
     "--num-heads and --num-layers do not apply to the rnn decoder (its sizes: --wordvec-dim, --hidden-dim)"),
])  # fmt: skip
def test_a_size_flag_of_another_decoder_is_refused(coco_folder, tmp_path, capsys, flags, phrase):
    code, err = run_train(capsys, "--data-dir", coco_folder, *flags, "--log-dir", tmp_path)
    assert_one_line_error(code, err, phrase)
    assert not (tmp_path / "lightning_logs").exists()  # refused before anything was written


# --- every file through its schema: what the earlier, case-by-case checks missed -----------------------------------


def _write_vocab(folder: Path, vocab) -> None:
    (folder / "coco2014_vocab.json").write_text(json.dumps(vocab))


def _features_group(folder: Path) -> None:
    with h5py.File(folder / "train2014_vgg16_fc7_pca.h5", "w") as f:
        f.create_group("features")


def _never_written(folder: Path) -> None:
    """A chunked dataset of 10^9 rows whose chunks were never written: a few KB on disk, endless to scan."""
    with h5py.File(folder / "val2014_vgg16_fc7_pca.h5", "w") as f:
        f.create_dataset("features", shape=(10**9, 512), chunks=(64, 512), dtype=np.float32)


SCHEMA_CASES = {
    "word_to_idx is a list": (lambda d: _write_vocab(d, {"idx_to_word": ["<NULL>"], "word_to_idx": ["<NULL>"]}),
                              ["coco2014_vocab.json: word_to_idx", "expected an object of word: id", "a list of 1"]),
    "features is a group": (_features_group, ["train2014_vgg16_fc7_pca.h5: features",
                                              "expected a float dataset 'features' of shape (Ni, D)", "HDF5 group"]),
    "an id that is a string": (lambda d: _write_vocab(d, {"idx_to_word": ["<NULL>"], "word_to_idx": {"<NULL>": "0"}}),
                               ["word_to_idx['<NULL>']", "an integer id >= 0", "the string '0'"]),
    "two words, one id": (lambda d: _write_vocab(d, {"idx_to_word": ["<NULL>", "<START>", "<END>"],
                                                     "word_to_idx": {"<NULL>": 0, "<START>": 1, "<END>": 1}}),
                          ["a distinct id per word", "id 1 for '<START>' and '<END>'"]),
    "deeply nested vocabulary": (lambda d: (d / "coco2014_vocab.json").write_text("[" * 100_000 + "]" * 100_000),
                                 ["coco2014_vocab.json", "nesting too deep"]),
    "URL file not UTF-8": (lambda d: (d / "val2014_urls.txt").write_bytes(b"http://x/\xff\xfe.jpg\n" * 6),
                           ["val2014_urls.txt", "expected UTF-8 text", "not UTF-8 at offset 9"]),
    "features never written": (_never_written, ["val2014_vgg16_fc7_pca.h5: features",
                                                "a dataset whose every value is stored", "chunks written"]),
    "three-dimensional captions": (lambda d: _edit_captions(d, lambda f: (f.__delitem__("val_captions"),
                                       f.create_dataset("val_captions", data=np.ones((18, 17, 2), np.int32)))),
                                   ["val_captions", "of shape (Nc, T>=2)", "found shape (18, 17, 2)"]),
    "fewer image indices than captions": (lambda d: _edit_captions(d, lambda f: (f.__delitem__("train_image_idxs"),
                                              f.create_dataset("train_image_idxs", data=np.zeros(35, np.int32)))),
                                          ["train_image_idxs", "the number of captions Nc[train] = 36", "found 35"]),
    "a scene of an unknown colour": (lambda d: (d / "val2014_scenes.json").write_text(json.dumps(
        [{"setting": "beach", "relation": None, "objects": [{"noun": "dog", "shape": "animal", "colour": "octarine",
          "size": "small", "count": 1, "positions": [[0.5, 0.5]]}]}] * 6)),
        ["val2014_scenes.json: [0].objects[0].colour", "expected one of", "the string 'octarine'"]),
}  # fmt: skip


@pytest.mark.parametrize("case", [*BAD_DATA, *SCHEMA_CASES])
def test_bad_data_stops_train_with_one_line(coco_folder, tmp_path, capsys, case):
    """Every file is read through its schema: a damaged one stops train.py with one line, before training."""
    corrupt, phrases = (BAD_DATA | SCHEMA_CASES)[case]
    corrupt(coco_folder)
    code, err = run_train(capsys, "--data-dir", coco_folder, "--epochs", "1", *SMALL, "--log-dir", tmp_path)
    assert_one_line_error(code, err, *phrases)
    assert not (tmp_path / "lightning_logs").exists()  # stopped before training


@pytest.mark.parametrize("idx_to_word", ["list with nulls", "object"])
def test_a_vocabulary_whose_ids_have_gaps_loads(coco_folder, idx_to_word):
    from conftest import WORDS

    word_to_idx = {word: (i if i < 10 else i + 5) for i, word in enumerate(WORDS)}  # ids 10..14 unused
    listed = [None] * 18
    for word, i in word_to_idx.items():
        listed[i] = word
    stated = listed if idx_to_word == "list with nulls" else {str(i): w for w, i in word_to_idx.items()}
    _write_vocab(coco_folder, {"idx_to_word": stated, "word_to_idx": word_to_idx})
    loaded, id_to_word = coco.read_vocab(coco_folder)
    assert loaded == word_to_idx and id_to_word[17] == "big" and id_to_word[12] == "<UNK>"


@pytest.mark.parametrize("args, phrases", [
    (["--hidden-dim", "100000"], ["this run needs about", "GiB", "--hidden-dim 100000 sized most of it"]),
    (["--batch-size", "100000000"], ["one batch's activations", "--batch-size 100000000 sized most of it"]),
    (["--accelerator", "cpu", "--devices", "100000"], ["--devices 100000: this machine has"]),
    (["--num-nodes", "2"], ["--num-nodes 2 needs a launcher"]),
])  # fmt: skip
def test_a_run_that_cannot_fit_is_refused_before_training(coco_folder, tmp_path, capsys, monkeypatch, args, phrases):
    for name in ("NODE_RANK", "MASTER_ADDR", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    code, err = run_train(capsys, "--data-dir", coco_folder, "--accelerator", "cpu", *args, "--log-dir", tmp_path)
    assert_one_line_error(code, err, *phrases)
    assert not (tmp_path / "lightning_logs").exists() and time.monotonic() - started < 60


def _bug(*args, **kwargs):
    return 1 / 0


def test_an_unexpected_exception_is_one_line_and_a_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train.CaptionDataModule, "setup", _bug)
    code = train.main(["--synthetic-size", "tiny", "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and "Traceback" not in err
    assert "train.py failed unexpectedly in main > run > build (train.py:" in line and "ZeroDivisionError" in line
    (report,) = tmp_path.glob("caption-torch-error-*.txt")
    assert f"full report in {report}" in line and "Traceback" in report.read_text()
    with pytest.raises(ZeroDivisionError):  # --debug lets it through
        train.main(["--synthetic-size", "tiny", "--log-dir", str(tmp_path), "--debug"])
    monkeypatch.setenv("CAPTION_TORCH_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        train.main(["--synthetic-size", "tiny", "--log-dir", str(tmp_path)])


def test_an_allocation_failure_anywhere_is_one_line(tmp_path, capsys, monkeypatch):
    def cannot_allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(CaptioningSystem, "__init__", cannot_allocate)
    code, err = run_train(capsys, "--synthetic-size", "tiny", "--log-dir", tmp_path)
    assert_one_line_error(code, err, "out of memory in main > run > build", "lower --batch-size")
    from caption_torch.cli import evaluate as evaluation_run

    monkeypatch.setattr(evaluation_run, "load_system", cannot_allocate)
    code = evaluate.main(["--ckpt", str(tmp_path / "c.ckpt")])
    assert_one_line_error(code, capsys.readouterr().err, "evaluate: out of memory")


def _rewrite(checkpoint_path: Path, out: Path, change) -> Path:
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    change(checkpoint)
    checkpoint["tensor_sha256"] = tensor_checksum(checkpoint)  # consistent: the structure is what is checked
    torch.save(checkpoint, out)
    return out


@pytest.mark.parametrize("change, phrases", [
    (lambda c: c["hyper_parameters"].__setitem__("hidden_dim", 32.0),
     ["hyper_parameters['hidden_dim']: expected an integer, found float 32.0"]),
    (lambda c: c["hyper_parameters"].__setitem__("lr", float("inf")),
     ["hyper_parameters['lr']: expected a finite number, found float inf"]),
    (lambda c: c["hyper_parameters"].__setitem__("dropout", 0.1),
     ["hyper_parameters['dropout']: expected only the hyperparameters", "a key train.py never writes"]),
    (lambda c: c["hyper_parameters"].__setitem__("word_to_idx", ["<NULL>"]),
     ["hyper_parameters['word_to_idx']: expected an object of word: id, found list"]),
    # 10^6 hidden units: refused from the shapes alone, nothing of 4 * 10^12 floats is allocated.
    (lambda c: c["hyper_parameters"].__setitem__("hidden_dim", 10**6),
     ["state_dict['model.W_proj']: expected shape (512, 1000000)", "found a torch.float32 tensor of shape (512, 32)"]),
    (lambda c: c.pop("state_dict"), ["state_dict: expected the entries hyper_parameters and state_dict"]),
    (lambda c: c["state_dict"].__setitem__("model.extra", torch.zeros(2)),
     ["state_dict['model.extra']", "a tensor this model does not have"]),
    (lambda c: c["state_dict"].__setitem__("model.Wh", c["state_dict"]["model.Wh"].long()),
     ["state_dict['model.Wh']: expected a floating-point tensor, found a torch.int64 tensor"]),
    (lambda c: c["optimizer_states"][0]["state"][0].__setitem__("exp_avg", torch.zeros(3)),
     ["optimizer_states[0]['state'][0]['exp_avg']: expected a tensor of the parameter's shape (13, 16)"]),
    (lambda c: c.__setitem__("global_step", -1), ["global_step: expected an integer >= 0, found int -1"]),
])  # fmt: skip
def test_a_checkpoint_is_read_through_its_schema(trained_checkpoint, coco_folder, tmp_path, capsys, change, phrases):
    damaged = _rewrite(trained_checkpoint, tmp_path / "damaged.ckpt", change)
    code = evaluate.main(["--ckpt", str(damaged), "--data-dir", str(coco_folder), "--no-meteor"])
    assert_one_line_error(code, capsys.readouterr().err, str(damaged), *phrases)


def test_resume_from_a_checkpoint_without_training_state(coco_folder, tmp_path, capsys, trained_checkpoint):
    weights_only = _rewrite(trained_checkpoint, tmp_path / "weights.ckpt", lambda c: c.pop("optimizer_states"))
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", "--batch-size", "10", "--epochs", "2",
                          *SMALL, "--log-dir", tmp_path / "r", "--resume", weights_only)  # fmt: skip
    assert_one_line_error(code, err, "weights.ckpt: optimizer_states: expected the training state", "--init-from")
