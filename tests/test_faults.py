"""Through faults: resume after SIGKILL, atomic checkpoint writes, bad input stopped in one line, same seed same curve.

Errors already covered where they are raised (tests/test_coco.py, test_data.py,
test_model.py, test_functional.py, test_evaluate.py) are checked here only as
train.py reports them: exit code 2 and one ``error: ...`` line, no traceback.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import train
from caption_torch.callbacks import LossHistory
from caption_torch.checkpointing import AtomicCheckpointIO

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
    assert history.state_dict() == {"losses": [5.0, 4.0, 3.0]}
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
        from caption_torch.checkpointing import AtomicCheckpointIO
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


def _drop_last_line(path: Path) -> None:
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-1]))


BAD_DATA = {
    "val features narrower than train": (lambda d: _set_features(d, "val", np.zeros((6, 256), np.float32)),
                                         ["disagree on the width D", "has 512", "has 256"]),
    "integer features": (lambda d: _set_features(d, "train", np.zeros((12, 512), np.int32)),
                         ["train2014_vgg16_fc7_pca.h5", "float dataset 'features'", "dtype int32"]),
    "caption id outside the vocabulary": (lambda d: _edit_captions(d, lambda f: f["train_captions"].__setitem__(
                                              (0, 3), 999)), ["id 999 in train_captions", "[0, 13)"]),
    "caption without <START>": (lambda d: _edit_captions(d, lambda f: f["val_captions"].__setitem__((2, 0), 4)),
                                ["1 val captions do not begin with <START>"]),
    "empty split": (lambda d: _edit_captions(d, _empty_val), ["at least one caption in val_captions", "empty split"]),
    # Only the samples printed after training read the URLs: they must still stop the run before it.
    "missing URL file": (lambda d: (d / "val2014_urls.txt").unlink(), ["val2014_urls.txt", "no such file"]),
    "URL file one line short": (lambda d: _drop_last_line(d / "train2014_urls.txt"),
                                ["train2014_urls.txt", "expected 12 lines", "found 11 lines"]),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_stops_train_with_one_line(coco_folder, tmp_path, capsys, case):
    corrupt, phrases = BAD_DATA[case]
    corrupt(coco_folder)
    code, err = run_train(capsys, "--data-dir", coco_folder, "--epochs", "1", *SMALL, "--log-dir", tmp_path)
    assert_one_line_error(code, err, *phrases)
    assert not (tmp_path / "lightning_logs").exists()  # stopped before training


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
])  # fmt: skip
def test_non_positive_sizes_are_refused_before_anything_runs(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit:
        train.main([flag, value])
    assert message in capsys.readouterr().err
    assert exit.value.code == 2  # argparse's usage error


@pytest.mark.parametrize("args, message", [
    (["--num-workers", "-1"], "--num-workers must be >= 0"),
    (["--resume"], "--resume found no"),
    (["--full-features"], "the embedded dataset has only the 512-d fc7-PCA ones"),
])  # fmt: skip
def test_inconsistent_flags_are_one_error_line_and_exit_2(capsys, tmp_path, args, message):
    code, err = run_train(capsys, *args, "--log-dir", tmp_path)
    assert_one_line_error(code, err, message)


def test_lr_decay_above_one(coco_folder, tmp_path, capsys):
    code, err = run_train(capsys, "--data-dir", coco_folder, "--lr-decay", "1.5", *SMALL, "--log-dir", tmp_path)
    assert_one_line_error(code, err, "lr_decay must be in (0, 1], got 1.5")


@pytest.mark.parametrize("flags, message", [
    (["--devices", "0"], "devices=0"),
    pytest.param(["--accelerator", "gpu"], "No supported gpu backend found",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")),
])  # fmt: skip
def test_hardware_lightning_cannot_provide(coco_folder, tmp_path, capsys, flags, message):
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "10", "--hidden-dim", "8",
                          "--wordvec-dim", "8", *flags, "--log-dir", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, message)


def test_nan_features_stop_training_and_name_the_step(coco_folder, tmp_path, capsys):
    with h5py.File(coco_folder / "train2014_vgg16_fc7_pca.h5", "a") as f:
        f["features"][3] = np.nan
    code, err = run_train(capsys, "--data-dir", coco_folder, "--overfit", "36", "--batch-size", "36", "--epochs", "3",
                          *SMALL, "--log-dir", tmp_path)  # fmt: skip
    assert_one_line_error(code, err, "training loss became nan at step 1", "check the features for NaN/inf")


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
    (["--cell", "lstm"], ["was trained with --cell rnn but this run has lstm"]),
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
