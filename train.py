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
import json
import logging
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint

from caption_torch import coco
from caption_torch.callbacks import LossHistory, ResumableSettings, StopOnSignal, TrainingStopped
from caption_torch.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    LastCheckpoint,
    RefuseNonFiniteWeights,
    check_model_fits_data,
    load_system,
    read_checkpoint,
)
from caption_torch.cli import check_writable_folder, device_count, positive_float, positive_int
from caption_torch.config import SELF_CRITICAL, CaptionConfig, preset, shape_fields
from caption_torch.data import CaptionDataModule, FeatureRows
from caption_torch.decoders import DECODERS
from caption_torch.plots import plot_loss_history
from caption_torch.system import CaptioningSystem

FULL, OVERFIT = preset(overfit=False), preset(overfit=True)
# The flags that set a CaptionConfig field (argparse stores each under the field's name).
CONFIG_FLAGS = ("decoder", "hidden_dim", "wordvec_dim", "num_heads", "num_layers", "batch_size", "epochs", "lr",
                "lr_decay", "samples_per_image")  # fmt: skip
# The flag of each config field, for messages (argparse stores each flag under the field's name).
FLAG_NAMES = {name: "--model" if name == "decoder" else "--" + name.replace("_", "-") for name in CONFIG_FLAGS}
SELF_CRITICAL_TEXT = ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in SELF_CRITICAL.items())
# These train in child processes and hand back only the weights and metrics, not the loss history or
# checkpoint paths this script reports; --strategy ddp re-runs the script on every rank instead.
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def quiet_lightning() -> None:
    """Drop Lightning's advertising tips and a deprecation warning it raises itself; keep everything else."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "Tip:" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="cs231n coco_captioning folder (default: the embedded synthetic dataset)",
    )
    data.add_argument(
        "--synthetic-size",
        default="default",
        choices=["tiny", "default", "coco"],
        help="size of the embedded dataset when --data-dir is not given (default: default)",
    )
    data.add_argument(
        "--full-features",
        action="store_true",
        help="use the 4096-d fc7 features instead of the 512-d fc7-PCA ones (needs --data-dir)",
    )
    data.add_argument(
        "--overfit",
        type=positive_int,
        metavar="N",
        default=None,
        help="train on N random captions only, with the settings of cs231n's RNN_Captioning notebook "
        f"(batch {OVERFIT.batch_size}, {OVERFIT.epochs} epochs, Adam {OVERFIT.lr:g}, lr_decay {OVERFIT.lr_decay}, "
        f"H={OVERFIT.hidden_dim}, W={OVERFIT.wordvec_dim})",
    )
    data.add_argument(
        "--max-val-images",
        type=positive_int,
        default=None,
        help="validate on this many random val images (default: all)",
    )
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    data.add_argument(
        "--feature-storage",
        default="hdf5",
        choices=["hdf5", "memory", "device"],
        help="stream features from HDF5, hold them in RAM, or on the accelerator (default: hdf5)",
    )

    model = parser.add_argument_group("model and optimisation (defaults: the full run; --overfit's in brackets)")
    model.add_argument(
        "--model",
        "--cell",
        dest="decoder",
        choices=list(DECODERS),
        default=None,
        help=f"decoder (default: {FULL.decoder} [{OVERFIT.decoder}, as the notebook]); --cell is the same flag",
    )
    for flag, name, kind, meaning in (
        ("--hidden-dim", "hidden_dim", positive_int, "hidden state width H of the RNN/LSTM"),
        ("--wordvec-dim", "wordvec_dim", positive_int, "word vector width W (the Transformer's every layer)"),
        ("--num-heads", "num_heads", positive_int, "Transformer attention heads"),
        ("--num-layers", "num_layers", positive_int, "Transformer decoder layers"),
        ("--batch-size", "batch_size", positive_int, "captions per batch"),
        ("--epochs", "epochs", positive_int, "training epochs"),
        ("--lr", "lr", positive_float, "Adam learning rate"),
        ("--lr-decay", "lr_decay", positive_float, "learning rate multiplier after each epoch (cs231n's lr_decay)"),
    ):
        default = f"{getattr(FULL, name):g} [{getattr(OVERFIT, name):g}]"
        model.add_argument(flag, dest=name, type=kind, default=None, help=f"{meaning} (default: {default})")
    model.add_argument("--seed", type=int, default=231, help="random seed (default: 231, the notebook's)")

    hardware = parser.add_argument_group("hardware and runs")
    hardware.add_argument("--accelerator", default="auto", help="cpu, gpu, auto, ... (default: auto)")
    hardware.add_argument(
        "--devices", type=device_count, default="auto", help="a count, -1 (all), indices like 0,1, or 'auto' (default)"
    )
    hardware.add_argument("--num-nodes", type=positive_int, default=1, help="machines for multi-node DDP")
    hardware.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default: auto)")
    hardware.add_argument(
        "--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed (CUDA), ... (default: 32-true)"
    )
    model.add_argument(
        "--self-critical",
        choices=["mean", "greedy"],
        default=None,
        help="fine-tune with self-critical training, rewards CIDEr-D, this baseline (needs --init-from; "
        f"defaults then: {SELF_CRITICAL_TEXT})",
    )
    model.add_argument(
        "--samples-per-image",
        type=positive_int,
        default=None,
        help=f"captions sampled per image by --self-critical (default: {FULL.samples_per_image})",
    )
    model.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's weights (the optimizer starts fresh); its model's sizes are used",
    )
    hardware.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CKPT",
        help="continue from a checkpoint; without a path, the newest lightning_logs/version_*/checkpoints/last.ckpt",
    )
    hardware.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        metavar="STEPS",
        help="also refresh last.ckpt every STEPS training steps (default: every epoch end)",
    )
    hardware.add_argument(
        "--log-dir", type=Path, default=Path("."), help="folder that receives lightning_logs/ (default: .)"
    )
    hardware.add_argument(
        "--fast-dev-run",
        action="store_true",
        help="run one training and one validation batch, write nothing, and stop (a smoke test of the setup)",
    )
    return parser


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Set ``args.config`` (and ``args.resume`` to a path): the run's settings, with the flags given replacing fields.

    A new run starts from the overfit or full preset of its decoder. ``--init-from`` takes the
    model (decoder and sizes) from its checkpoint, and ``--self-critical`` the self-critical
    settings over the full run's. ``--resume`` continues the checkpoint's own run: every
    setting is its, unless a flag says otherwise (and model flags must then agree with it).
    """
    if args.init_from is not None and args.resume is not None:
        raise ValueError("--init-from starts a new run from a checkpoint's weights and --resume continues one; "
                         "give one of them")  # fmt: skip
    if args.self_critical is not None and args.init_from is None and args.resume is None:
        raise ValueError("--self-critical fine-tunes a trained model: give its checkpoint with --init-from")
    if args.resume == "last":
        args.resume = find_last_checkpoint(args.log_dir)
    if args.resume is not None:
        config = load_system(args.resume).config
        if args.self_critical is not None and args.self_critical != config.self_critical:
            raise ValueError(f"--resume {args.resume} continues a {config.self_critical or 'cross-entropy'} run; "
                             f"to fine-tune it with --self-critical {args.self_critical}, use --init-from")  # fmt: skip
    else:
        initial = load_system(args.init_from).config if args.init_from is not None else None
        config = preset(args.overfit is not None, args.decoder or (initial.decoder if initial else None))
        if initial is not None:
            config = config.updated(**{name: getattr(initial, name) for name in shape_fields(initial.decoder)})
        if args.self_critical is not None:
            config = replace(config.updated(**SELF_CRITICAL), self_critical=args.self_critical)
    try:
        args.config = config.updated(**{name: getattr(args, name) for name in CONFIG_FLAGS})
    except ValueError as error:  # the config names its fields; the user typed flags
        raise ValueError(re.sub(r"\b(" + "|".join(CONFIG_FLAGS) + r")\b", lambda m: FLAG_NAMES[m[1]], str(error)))
    if args.init_from is not None:
        refuse_another_model(args.init_from, initial, args.config)
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.strategy.startswith(SPAWNING_STRATEGIES):
        raise ValueError(f"--strategy {args.strategy} trains in child processes whose loss history "
                         "train.py cannot report; use --strategy ddp")  # fmt: skip
    return args


def find_last_checkpoint(log_dir: Path) -> Path:
    candidates = sorted((log_dir / "lightning_logs").glob("version_*/checkpoints/last.ckpt"),
                        key=lambda p: p.stat().st_mtime)  # fmt: skip
    if not candidates:
        raise ValueError(f"--resume found no {log_dir}/lightning_logs/version_*/checkpoints/last.ckpt")
    return candidates[-1]


def check_resumable(path: Path | str, system: CaptioningSystem) -> None:
    """The checkpoint must exist and hold this run's model: vocabulary, feature width, decoder and sizes."""
    stored = load_system(path)  # weights_only; CheckpointError if missing or unreadable
    check_model_fits_data(stored.model, system.model.word_to_idx, system.model.input_dim)
    refuse_another_model(path, stored.config, system.config)


def refuse_another_model(path: Path | str, stored: CaptionConfig, config: CaptionConfig) -> None:
    """A CheckpointError naming the first flag whose value would build another model than the checkpoint's."""
    for name in shape_fields(stored.decoder):
        theirs, ours = getattr(stored, name), getattr(config, name)
        if theirs != ours:
            flag = FLAG_NAMES.get(name, name)
            raise CheckpointError(f"checkpoint {path} was trained with {flag} {theirs} but this run has {ours}; "
                                  "leave the flag out (the checkpoint's is used) or match it")  # fmt: skip


def describe_image(source) -> str:
    """An image source (URL, or the embedded data's scene dict) in one line."""
    return source if isinstance(source, str) else "scene: " + json.dumps(source, separators=(",", ":"))


def print_samples(system: CaptioningSystem, dm: CaptionDataModule, seed: int) -> None:
    """Greedy captions for two train and two val images next to a ground truth, as the notebook."""
    rng = np.random.default_rng(seed)
    model = system.model.cpu().eval()
    dtype = next(model.parameters()).dtype  # float64 or bf16 after --precision 64-true / bf16-true
    for split, dataset in (("train", dm.train_images), ("val", dm.val_set)):
        features = FeatureRows(dataset.features.path)  # read from the file, whatever the storage
        sources = coco.image_sources(dm.data_dir, split, dm.num_images[split])
        for index in rng.choice(len(dataset), size=min(2, len(dataset)), replace=False):
            row = int(dataset.image_rows[index])
            sample = model.sample(features.read(np.array([row])).to(dtype), system.config.max_length)[0]
            truth = dataset.references(index)[0]
            print(f"\n{split}\n  sample: {coco.decode_captions(sample, dm.idx_to_word)}")
            print(f"  GT:     {coco.decode_captions(truth, dm.idx_to_word)}")
            print(f"  image:  {describe_image(sources[row])}")


class Run(NamedTuple):
    """What :func:`build` makes and :func:`fit` and :func:`report` use."""

    dm: CaptionDataModule
    system: CaptioningSystem
    trainer: L.Trainer
    history: LossHistory
    last: LastCheckpoint
    best: ModelCheckpoint | None  # None without validation
    ckpt_path: Path | None  # the checkpoint resumed from


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
    ckpt_path = args.resume  # a path: resolve_defaults found the newest for a bare --resume
    if ckpt_path is not None:
        read_checkpoint(ckpt_path)  # missing, empty or damaged: refused before the data is read
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
    L.seed_everything(args.seed, workers=True, verbose=False)
    dm = CaptionDataModule(
        data_dir=args.data_dir,
        batch_size=config.batch_size,
        num_workers=args.num_workers,
        max_train=args.overfit,
        max_val_images=args.max_val_images,
        pca_features=not args.full_features,
        feature_storage=args.feature_storage,
        pin_memory=args.accelerator not in ("cpu",) and torch.cuda.is_available(),
        seed=args.seed,
        synthetic_size=args.synthetic_size,
        train_on_images=config.self_critical is not None,
    )
    dm.prepare_data()
    dm.setup("fit")  # the model needs the vocabulary and the feature width
    system = CaptioningSystem.from_config(dm.word_to_idx, dm.feature_dim, config)
    if ckpt_path is not None:
        check_resumable(ckpt_path, system)
    elif args.init_from is not None:
        initial = load_system(args.init_from)
        check_model_fits_data(initial.model, dm.word_to_idx, dm.feature_dim)
        system.model.load_state_dict(initial.model.state_dict())
    history = LossHistory(print_every=10)
    validate = args.overfit is None or args.fast_dev_run  # the notebook's overfit run has no validation
    # LastCheckpoint before StopOnSignal: at an epoch end the save comes first, then the stop.
    settings = ResumableSettings(config.lr, config.lr_decay, config.epochs)
    callbacks = [history, RefuseNonFiniteWeights(), stop.last, stop, settings]
    best = None
    if validate:
        # A self-critical run optimises CIDEr-D, so its best checkpoint is the one with the best val CIDEr-D.
        monitor = "val_cider" if config.self_critical else "val_bleu4"
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
        for n in (1, 2, 3, 4):
            print(f"  BLEU-{n}: {metrics[f'val_bleu{n}'].item():.4f}")
        print(f"  CIDEr-D: {metrics['val_cider'].item():.4f}")
    print(f"\nfinal training loss: {history.losses[-1]:.6f}")
    print(f"loss plot: {plot}")
    if parts.best is not None:
        print(f"best checkpoint: {parts.best.best_model_path}")
    print(f"checkpoint: {last.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
