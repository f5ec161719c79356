"""Train a captioning decoder (vanilla RNN, LSTM or Transformer) with Lightning.

    python train.py --overfit 50          # cs231n's RNN_Captioning notebook: overfit 50 captions
    python train.py                       # the LSTM on the embedded dataset, reports val BLEU and CIDEr-D
    python train.py --model transformer --data-dir coco_captioning --accelerator gpu --devices 2
    python train.py --self-critical mean --init-from CKPT     # fine-tune a trained model on CIDEr-D
    python train.py --fast-dev-run --model rnn     # one training and one val batch: checks the setup

Without --data-dir the embedded synthetic dataset (cs231n's layout, generated on
first use) is used. Logs and checkpoints go to lightning_logs/version_N/.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint

from caption_torch import guard
from caption_torch.cli import flags, resources
from caption_torch.cli.argtypes import check_hardware, check_writable_folder
from caption_torch.cli.flags import check_resumable, find_last_checkpoint, resolve_defaults  # noqa: F401 (the tests' entry points)
from caption_torch.data.cs231n import decode_captions
from caption_torch.data.datamodule import CaptionDataModule, FeatureRows
from caption_torch.data.sources import open_source
from caption_torch.evaluation.plots import plot_loss_history
from caption_torch.metrics.registry import VALIDATION_METRICS
from caption_torch.models.registry import DECODERS, CaptionConfig
from caption_torch.training.callbacks import LossHistory, ResumableSettings, StopOnSignal, TrainingStopped
from caption_torch.training.checkpointing import (
    AtomicCheckpointIO,
    LastCheckpoint,
    RefuseNonFiniteWeights,
    check_model_fits_data,
)
from caption_torch.training.self_critical import SelfCriticalSystem, system_class, training_reward
from caption_torch.training.system import CaptioningSystem


def quiet_lightning() -> None:
    """Drop Lightning's advertising tips and a deprecation warning it raises itself; keep everything else."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "Tip:" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")


def build_parser() -> argparse.ArgumentParser:
    return flags.build_parser(__doc__)


def print_samples(system: CaptioningSystem, dm: CaptionDataModule, seed: int) -> None:
    """Greedy captions for two train and two val images next to a ground truth, as the notebook."""
    rng = np.random.default_rng(seed)
    model = system.model.cpu().eval()
    dtype = next(model.parameters()).dtype  # float64 or bf16 after --precision 64-true / bf16-true
    for split, dataset in (("train", dm.train_images), ("val", dm.val_set)):
        features = FeatureRows(dataset.features.path)  # read from the file, whatever the storage
        sources = dm.source.image_sources(split)
        for index in rng.choice(len(dataset), size=min(2, len(dataset)), replace=False):
            row = int(dataset.image_rows[index])
            sample = model.sample(features.read(np.array([row])).to(dtype), system.config.max_length)[0]
            truth = dataset.references(index)[0]
            print(f"\n{split}\n  sample: {decode_captions(sample, dm.idx_to_word)}")
            print(f"  GT:     {decode_captions(truth, dm.idx_to_word)}")
            print(f"  image:  {sources[row].describe()}")


class Run(NamedTuple):
    """What :func:`build` makes and :func:`fit` and :func:`report` use."""

    dm: CaptionDataModule
    system: CaptioningSystem
    trainer: L.Trainer
    history: LossHistory
    last: LastCheckpoint
    best: ModelCheckpoint | None  # None without validation
    ckpt_path: Path | None  # the checkpoint resumed from


@guard.entry_point("train.py", lambda argv: Path(guard.option_value(argv, "--log-dir") or "."))
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # malformed flags: argparse's usage message, exit 2
    stop = StopOnSignal(LastCheckpoint(every_n_steps=args.checkpoint_every))
    stop.install()  # before anything slow: a signal while the data is prepared stops at once, in one line
    try:
        return run(resolve_defaults(args), stop)
    except TrainingStopped as stopped:
        return stopped_line(stopped)
    # Bad data, sizes, paths or checkpoint, a non-finite loss, hardware flags Lightning cannot satisfy: one line.
    except (ValueError, FloatingPointError, MisconfigurationException) as error:
        return error_line(str(error))
    except OSError as error:  # a full disk, a permission, a file that vanished: name the file
        return error_line(f"{error.filename}: {error.strerror}" if error.filename else str(error))
    except (MemoryError, torch.OutOfMemoryError) as error:
        return error_line(f"out of memory ({' '.join(str(error).split())[:200] or 'host RAM'}); "
                          "lower --batch-size, or keep features on disk with --feature-storage hdf5")  # fmt: skip
    except Exception as error:
        if stop.received is not None:
            # A signal also sent to DataLoader workers ends them, and the loader raises: still a stop, not a crash.
            return stopped_line(stop.stopped())
        if lost_peer(error):  # the peer's own output says why it ended (an error line, a kill)
            last = stop.last
            saved = f"; --resume {last.path} continues from step {last.saved_step}" if last.saved_step else ""
            return error_line(f"process {rank_zero_only.rank} lost contact with the run's other processes "
                              f"(one ended or was killed){saved}")  # fmt: skip
        raise  # a bug: the traceback is what helps
    finally:
        stop.uninstall()
        if torch.distributed.is_initialized():  # stopped or failed during training: leave the group before exit
            torch.distributed.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another process of the run is gone (gloo and NCCL words for it)."""
    message = str(error)
    return isinstance(error, torch.distributed.DistBackendError) or (
        isinstance(error, RuntimeError) and any(words in message for words in ("closed by peer", "reset by peer"))
    )


def error_line(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def stopped_line(stopped: TrainingStopped) -> int:
    if rank_zero_only.rank == 0:  # every rank stops; one says so
        print(stopped, file=sys.stderr)
    return stopped.exit_code


def run(args: argparse.Namespace, stop: StopOnSignal) -> int:
    """Train as the flags say; rank 0 then prints the samples, metrics and paths."""
    quiet_lightning()
    check_writable_folder(args.log_dir, "--log-dir")  # before the data is read, not after training
    check_hardware(args.accelerator, args.devices, args.num_nodes)
    # A path (resolve_defaults found the newest for a bare --resume, and read and verified it).
    ckpt_path = args.resume
    parts = build(args, stop, ckpt_path)
    log_dir = fit(parts)
    if not parts.trainer.is_global_zero:
        return 0
    if args.fast_dev_run:
        print(f"fast dev run: one training and one validation batch of --model {args.config.decoder} ran")
        return 0
    return report(parts, args, log_dir)


def build(args: argparse.Namespace, stop: StopOnSignal, ckpt_path: Path | str | None) -> Run:
    """The data (read and checked), the system, the callbacks and the Trainer; the checkpoint must fit them."""
    config: CaptionConfig = args.config
    trains = system_class(config)  # cross-entropy, or self-critical when the config names a baseline
    L.seed_everything(args.seed, workers=True, verbose=False)
    dm = CaptionDataModule(
        open_source(args.data_dir, args.synthetic_size, pca_features=not args.full_features),
        batch_size=config.batch_size,
        num_workers=args.num_workers,
        max_train=args.overfit,
        max_val_images=args.max_val_images,
        feature_storage=args.feature_storage,
        pin_memory=args.accelerator not in ("cpu",) and torch.cuda.is_available(),
        seed=args.seed,
        train_on_images=trains.trains_on_images,
    )
    dm.prepare_data()
    dm.setup("fit")  # the model needs the vocabulary and the feature width
    # Refuse a run that would not fit the device before its model is allocated (resources.py).
    resources.check_fits(config, dm.word_to_idx, dm.feature_dim, dm.train_set.captions.shape[1],
                         sum(dm.num_images.values()), args.accelerator, args.devices, args.precision,
                         args.feature_storage)  # fmt: skip
    if trains is SelfCriticalSystem:
        reward = training_reward(dm.train_captions, dm.word_to_idx, dm.source.folder)
        system = SelfCriticalSystem(dm.word_to_idx, dm.feature_dim, config, reward=reward)
    else:
        system = CaptioningSystem(dm.word_to_idx, dm.feature_dim, config)
    if ckpt_path is not None:
        check_resumable(ckpt_path, args.start, system)
    elif args.init_from is not None:
        check_model_fits_data(args.start.model, dm.word_to_idx, dm.feature_dim)
        system.model.load_state_dict(args.start.model.state_dict())
    args.start = None  # its weights are in the system (or Lightning restores them): free the copy
    history = LossHistory(print_every=10)
    validate = args.overfit is None or args.fast_dev_run  # the notebook's overfit run has no validation
    # LastCheckpoint before StopOnSignal: at an epoch end the save comes first, then the stop.
    settings = ResumableSettings(config.lr, config.lr_decay, config.epochs)
    callbacks = [history, RefuseNonFiniteWeights(), stop.last, stop, settings]
    best = None
    if validate:
        monitor = system.monitor  # what it optimises: val BLEU-4, or val CIDEr-D for self-critical training
        best = ModelCheckpoint(monitor=monitor, mode="max", filename=f"best-{{epoch}}-{{{monitor}:.4f}}")
        callbacks.append(best)
    try:
        trainer = make_trainer(args, callbacks, validate, len(dm.train_set))
    except TypeError as error:  # Lightning's refusal of some hardware combinations, e.g. --devices -1 on the CPU
        raise ValueError(f"--accelerator {args.accelerator} --devices {args.devices}: {error}") from None
    return Run(dm, system, trainer, history, stop.last, best, Path(ckpt_path) if ckpt_path is not None else None)


def make_trainer(args: argparse.Namespace, callbacks: list[L.Callback], validate: bool, train_size: int) -> L.Trainer:
    """The Trainer the flags ask for, over ``train_size`` training captions."""
    return L.Trainer(
        default_root_dir=args.log_dir,
        max_epochs=args.config.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        callbacks=callbacks,
        enable_checkpointing=validate,  # else Lightning adds a default ModelCheckpoint beside LastCheckpoint
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=validate and not args.fast_dev_run,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=min(10, max(1, train_size // args.config.batch_size)),
        enable_model_summary=False,
        fast_dev_run=args.fast_dev_run,
    )


def fit(parts: Run) -> Path:
    """Train (resuming if asked); every rank returns here, with the run's log folder."""
    parts.trainer.fit(parts.system, datamodule=parts.dm, ckpt_path=parts.ckpt_path)
    # A broadcast under DDP: every rank must ask, before the others return. (None in a fast dev run: no logger.)
    log_dir = Path(parts.trainer.log_dir or parts.trainer.default_root_dir)
    if torch.distributed.is_initialized():
        # The last collective is done; left to interpreter exit, gloo sometimes aborts a rank whose peer is gone.
        torch.distributed.destroy_process_group()
    return log_dir


def report(parts: Run, args: argparse.Namespace, log_dir: Path) -> int:
    """Rank 0's summary: samples, val metrics, final loss and where the plot and checkpoints are."""
    trainer, history, last = parts.trainer, parts.history, parts.last
    if parts.ckpt_path is not None and not last.path.is_file():  # no epoch ended: nothing was left to train
        print(f"nothing to train: {parts.ckpt_path} has already completed --epochs {args.config.epochs}; "
              "raise --epochs to go on")  # fmt: skip
        return 0
    steps_per_epoch = max(1, trainer.num_training_batches)
    if history.rewards:  # self-critical: the reward is what is optimised, and what the picture shows
        plot = plot_loss_history(history.rewards, log_dir / "loss.png", "Self-critical training: mean reward",
                                 steps_per_epoch, ylabel="CIDEr-D of the sampled captions")  # fmt: skip
    else:
        plot = plot_loss_history(history.losses, log_dir / "loss.png", steps_per_epoch=steps_per_epoch,
                                 ylabel=DECODERS[args.config.decoder].loss_label)  # fmt: skip
    print_samples(parts.system, parts.dm, args.seed)
    if parts.best is not None:
        metrics = trainer.callback_metrics
        print("\nvalidation (greedy, all references):")
        print(f"  val loss: {metrics['val_loss'].item():.4f}")
        for metric in VALIDATION_METRICS:
            print(f"  {metric.name}: {metrics[metric.log_name].item():.4f}")
    print(f"\nfinal training loss: {history.losses[-1]:.6f}")
    print(f"loss plot: {plot}")
    if parts.best is not None:
        print(f"best checkpoint: {parts.best.best_model_path}")
    print(f"checkpoint: {last.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
