"""Data parallel on CPU (gloo): train.py under --strategy ddp, samplers, synchronised metrics.

Two processes with 4 captions each must equal one process with the same 8 captions:
the loss is summed over time and divided by the per-process batch, and DDP averages
gradients over ranks, so (g_rank0 / 4 + g_rank1 / 4) / 2 == (g_rank0 + g_rank1) / 8.
Adam's update is invariant to the gradient's scale, so the check compares Adam's
moments too: a sum over ranks instead of a mean would double ``exp_avg``.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_coco_folder

import train
from caption_torch.data.datamodule import CaptionDataModule
from caption_torch.data.sources import open_source
from caption_torch.models.registry import CaptionConfig
from caption_torch.training.system import CaptioningSystem

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--hidden-dim", "32", "--wordvec-dim", "16", "--accelerator", "cpu"]
# Set by a launcher for its children; inherited by accident they would make a run think it is one of them.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK", "WORLD_SIZE",
                    "LOCAL_WORLD_SIZE", "GROUP_RANK", "RANK", "PL_GLOBAL_SEED")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_train(*args, start_new_session: bool = False, **env) -> subprocess.Popen:
    """Start ``python train.py ARGS`` with a clean launch environment plus ``env`` (own process group if asked)."""
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                            env=clean | {"OMP_NUM_THREADS": "1"} | env, text=True, start_new_session=start_new_session,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 180) -> str:
    """Wait for a train.py process; its stdout + stderr, after asserting it exited cleanly."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"train.py exited {process.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in out + err and "terminate called" not in out + err, err[-3000:]
    return out + err


def last_checkpoint(log_dir: Path) -> dict:
    (path,) = log_dir.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    return torch.load(path, weights_only=True)


# One global batch of the same 8 captions per epoch, three epochs: three optimizer steps.
GLOBAL_BATCH = ["--overfit", "8", "--epochs", "3", *SMALL]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, batch 8."""
    root = tmp_path_factory.mktemp("one_process")
    folder = write_coco_folder(root / "coco")
    finish(launch_train("--data-dir", folder, *GLOBAL_BATCH, "--batch-size", "8", "--devices", "1",
                        "--log-dir", root / "logs"))  # fmt: skip
    return folder, last_checkpoint(root / "logs")


@pytest.mark.parametrize("layout", ["1 node x 2 devices", "2 nodes x 1 device"])
def test_two_processes_with_half_batches_equal_one_process(one_process, tmp_path, layout):
    folder, expected = one_process
    args = ["--data-dir", folder, *GLOBAL_BATCH, "--batch-size", "4", "--strategy", "ddp", "--log-dir", tmp_path]
    if layout == "1 node x 2 devices":
        finish(launch_train(*args, "--devices", "2", MASTER_PORT=str(free_port())))
    else:  # two "machines" on localhost, as a cluster launcher would start them
        env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        nodes = [launch_train(*args, "--devices", "1", "--num-nodes", "2", NODE_RANK=str(rank), **env)
                 for rank in (1, 0)]  # fmt: skip
        for node in nodes:
            finish(node)
    state = last_checkpoint(tmp_path)

    assert state["global_step"] == expected["global_step"] == 3  # each rank took one batch of 4 per epoch
    for name, weights in expected["state_dict"].items():
        torch.testing.assert_close(state["state_dict"][name], weights, rtol=0, atol=1e-5, msg=name)
    ours, theirs = state["optimizer_states"][0], expected["optimizer_states"][0]
    assert ours["param_groups"][0]["lr"] == theirs["param_groups"][0]["lr"]
    for index, moments in theirs["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours["state"][index][moment], moments[moment], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("decoder", ["lstm", pytest.param("transformer", marks=pytest.mark.slow)])
def test_ddp_run_prints_and_writes_once(coco_folder, tmp_path, decoder):
    sizes = SMALL[2:] if decoder == "transformer" else SMALL  # the Transformer has no --hidden-dim
    out = finish(launch_train("--data-dir", coco_folder, "--batch-size", "4", "--epochs", "1", *sizes,
                              "--model", decoder, "--devices", "2", "--strategy", "ddp", "--log-dir", tmp_path,
                              MASTER_PORT=str(free_port())))  # fmt: skip
    # 36 captions over 2 ranks: 18 each, batches of 4, 5 steps; printed by rank 0 alone.
    assert out.count("(Iteration 1 / 5) loss:") == 1 and out.count("(Iteration 5 / 5) loss:") == 1
    assert out.count("validation (greedy, all references):") == 1 and out.count("final training loss") == 1
    assert out.count("\ntrain\n") == 2 and out.count("\nval\n") == 2
    for n in (1, 2, 3, 4):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"BLEU-{n}:"))
        assert 0.0 <= float(line.split()[-1]) <= 1.0
    assert out.count("CIDEr-D:") == 1
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]  # no second version dir
    version = tmp_path / "lightning_logs" / "version_0"
    assert (version / "loss.png").stat().st_size > 10_000
    state = last_checkpoint(tmp_path)
    assert state["global_step"] == 5 and len(state["callbacks"]["LossHistory"]["losses"]) == 5
    assert len(list((version / "checkpoints").glob("best-*.ckpt"))) == 1


class RecordRanks(L.Callback):
    """Writes, per rank, the loaders' samplers, the indices they give, and the synchronised val metrics."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_validation_end(self, trainer, pl_module) -> None:
        loader = trainer.val_dataloaders
        record = {
            "val_sampler": type(loader.sampler).__name__,
            "val_indices": list(loader.sampler),
            "metrics": {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("val_")},
        }
        fitting = trainer.state.fn == "fit"  # during fit, validation runs with trainer.training False
        if fitting:
            record |= {"train_sampler": type(trainer.train_dataloader.sampler).__name__,
                       "train_indices": list(trainer.train_dataloader.sampler)}  # fmt: skip
        (self.folder / f"{'fit' if fitting else 'validate'}-rank{trainer.global_rank}.json").write_text(
            json.dumps(record)
        )


@pytest.fixture
def restore_environment():
    """Lightning's launchers set MASTER_PORT and friends in this process; put them back afterwards."""
    saved = dict(os.environ)
    os.environ["MASTER_PORT"] = str(free_port())
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_samplers_shard_and_metrics_are_synchronised(coco_folder, tmp_path, restore_environment):
    dm = CaptionDataModule(open_source(coco_folder), batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    L.seed_everything(0, verbose=False)
    system = CaptioningSystem(dm.word_to_idx, dm.feature_dim, CaptionConfig.of(wordvec_dim=16, hidden_dim=32))
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, num_sanity_val_steps=0,
                    callbacks=[RecordRanks(tmp_path)], **quiet)  # fmt: skip
    ddp.fit(system, datamodule=dm)  # the trained weights come back from rank 0
    (two_ranks,) = ddp.validate(system, datamodule=dm, verbose=False)
    (one_rank,) = L.Trainer(accelerator="cpu", devices=1, **quiet).validate(system, datamodule=dm, verbose=False)

    ranks = [json.loads((tmp_path / f"fit-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["train_sampler"] for r in ranks] == [r["val_sampler"] for r in ranks] == ["DistributedSampler"] * 2
    # The train captions (36) and val images (6) are split between the ranks: disjoint, together all.
    for key, size in (("train_indices", 36), ("val_indices", 6)):
        first, second = (set(r[key]) for r in ranks)
        assert len(first) == len(second) == size // 2 and not first & second and first | second == set(range(size))
    # Each rank saw half the val images, yet both report the metrics of all of them.
    validated = [json.loads((tmp_path / f"validate-rank{r}.json").read_text())["metrics"] for r in (0, 1)]
    assert validated[0] == validated[1]
    assert {k: two_ranks[k] for k in ("val_bleu1", "val_bleu2", "val_bleu3", "val_bleu4")} == \
        {k: one_rank[k] for k in ("val_bleu1", "val_bleu2", "val_bleu3", "val_bleu4")}  # fmt: skip
    assert two_ranks["val_bleu1"] > 0
    assert two_ranks["val_loss"] == pytest.approx(one_rank["val_loss"], rel=1e-6)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork_find_unused_parameters_true"])
def test_spawning_strategies_are_refused_with_the_alternative(strategy, capsys):
    assert train.main(["--strategy", strategy]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "use --strategy ddp" in err


@pytest.mark.slow
@pytest.mark.parametrize("target", ["process group", "rank 0 alone"])
def test_sigterm_ends_every_rank_saves_and_resumes(coco_folder, tmp_path, target):
    import signal
    import time

    args = ["--data-dir", coco_folder, "--overfit", "8", "--batch-size", "2", "--epochs", "100", *SMALL,
            "--devices", "2", "--strategy", "ddp", "--log-dir", tmp_path]  # fmt: skip
    # Its own process group, as a scheduler starts a job: the group signal reaches both ranks.
    process = launch_train(*args, start_new_session=True, MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    try:
        for line in process.stdout:
            if line.startswith("(Iteration 11 /"):
                break
        if target == "process group":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.monotonic() - sent < 30 and process.returncode == 128 + signal.SIGTERM, err[-3000:]
    time.sleep(1)
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(process.pid)], capture_output=True, text=True).stdout
    assert all(state.startswith("Z") for state in states.split()), states  # no rank left running (zombies have ended)
    assert "Traceback" not in err
    (stopped,) = [line for line in err.splitlines() if line.startswith("stopped by SIGTERM at step ")]
    step = int(stopped.split(" at step ")[1].split(";")[0])
    assert last_checkpoint(tmp_path)["global_step"] == step

    resumed = finish(launch_train(*args, "--resume", MASTER_PORT=str(free_port())))
    assert "checkpoint: " in resumed
    (path,) = tmp_path.glob("lightning_logs/version_1/checkpoints/last.ckpt")
    assert torch.load(path, weights_only=True)["global_step"] == 200  # 4 captions per rank, batch 2, 100 epochs


@pytest.mark.slow
def test_a_killed_rank_ends_the_other_with_one_line(coco_folder, tmp_path):
    import signal

    args = ["--data-dir", coco_folder, "--overfit", "8", "--batch-size", "2", "--epochs", "100", *SMALL,
            "--devices", "2", "--strategy", "ddp", "--log-dir", tmp_path]  # fmt: skip
    process = launch_train(*args, MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    try:
        for line in process.stdout:
            if line.startswith("(Iteration 11 /"):
                break
        (rank1,) = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "train.py"], capture_output=True,
                                  text=True).stdout.split()  # fmt: skip
        os.kill(int(rank1), signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 2 and "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: process 0 lost contact with the run's other processes (one ended or was killed)")


def test_self_critical_under_ddp_splits_the_images_between_ranks(coco_folder, tmp_path):
    """12 training images, 3 per step: one process takes 4 steps an epoch, two ranks 2 each (their own images)."""
    finish(launch_train("--data-dir", coco_folder, "--epochs", "1", "--batch-size", "12", *SMALL, "--devices", "1",
                        "--log-dir", tmp_path / "xe"))  # fmt: skip
    (start,) = (tmp_path / "xe").glob("lightning_logs/version_0/checkpoints/last.ckpt")
    out = finish(launch_train("--data-dir", coco_folder, "--self-critical", "mean", "--init-from", start,
                              "--samples-per-image", "3", "--batch-size", "3", "--epochs", "1", "--accelerator", "cpu",
                              "--devices", "2", "--strategy", "ddp", "--log-dir", tmp_path / "sc",
                              MASTER_PORT=str(free_port())))  # fmt: skip
    assert out.count("(Iteration 2 / 2) loss:") == 1 and ", reward: " in out  # printed by rank 0 alone
    assert out.count("CIDEr-D:") == 1
    state = last_checkpoint(tmp_path / "sc")
    assert state["global_step"] == 2 and len(state["callbacks"]["LossHistory"]["rewards"]) == 2
    assert len(list((tmp_path / "sc").glob("lightning_logs/version_0/checkpoints/best-*val_cider=*.ckpt"))) == 1
