"""train.py's flags and how they become a run: the parser, and the config a run starts from.

A new run starts from the full or overfit preset of its decoder (``config.py``); ``--init-from``
takes the model from a checkpoint, ``--resume`` the checkpoint's whole run; then every flag given
replaces its field. Checkpoints must then hold the model the flags describe.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from caption_torch.cli.argtypes import caption_length, device_count, positive_float, positive_int, seed, worker_count
from caption_torch.models.config import SELF_CRITICAL, UNSET, Settings, TrainingConfig
from caption_torch.models.registry import DECODERS, CaptionConfig, all_size_fields, preset
from caption_torch.training.checkpointing import CheckpointError, check_model_fits_data, load_system
from caption_torch.training.system import CaptioningSystem

FULL, OVERFIT = preset(overfit=False), preset(overfit=True)
# The flags that set a CaptionConfig field, one per field (argparse stores each under the field's name):
# every decoder's sizes, then the training settings.
CONFIG_FLAGS = ("decoder", *all_size_fields(), *TrainingConfig.names())
# The flag of each config field, for messages.
FLAG_NAMES = {name: "--model" if name == "decoder" else "--" + name.replace("_", "-") for name in CONFIG_FLAGS}
SELF_CRITICAL_TEXT = ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in SELF_CRITICAL.items())
# argparse's type for each kind of field check (config.py's checks name their kind).
FLAG_TYPES = {"positive integer": positive_int, "positive number": positive_float, "fraction": positive_float,
              "caption length": caption_length}  # fmt: skip
# These train in child processes and hand back only the weights and metrics, not the loss history or
# checkpoint paths this script reports; --strategy ddp re-runs the script on every rank instead.
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def _declaring(name: str) -> type[Settings]:
    """The settings class that declares the field ``name``: a decoder's sizes or the training settings."""
    if name in TrainingConfig.names():
        return TrainingConfig
    return next(entry.config for entry in DECODERS.values() if name in entry.config.names())


def _defaults(name: str) -> str:
    """A field's full-run default and --overfit's in brackets, then each decoder's own where its presets differ.

    A size only some decoders have shows only theirs ("transformer 2 [2]").
    """

    def pair(full: CaptionConfig, overfit: CaptionConfig) -> tuple | None:
        return (full.flat()[name], overfit.flat()[name]) if name in full.flat() and name in overfit.flat() else None

    common = pair(FULL, OVERFIT)
    texts = [f"{common[0]:g} [{common[1]:g}]"] if common else []
    for decoder in DECODERS:
        own = pair(preset(False, decoder), preset(True, decoder))
        if own is not None and own != common:
            texts.append(f"{decoder} {own[0]:g} [{own[1]:g}]")
    return "; ".join(texts)


def add_config_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per config field, generated from its declaration: its help, its check, its presets' defaults.

    Every flag defaults to ``UNSET`` (left out): the run's preset or checkpoint then decides.
    """
    group.add_argument(
        "--model",
        "--cell",
        dest="decoder",
        choices=list(DECODERS),
        default=UNSET,
        help=f"decoder (default: {FULL.decoder} [{OVERFIT.decoder}, as the notebook]); --cell is the same flag",
    )
    for name in CONFIG_FLAGS[1:]:
        owner = _declaring(name)
        check = owner.field_check(name)
        if check.kind == "choice":  # typed as the choices are, e.g. years, so argparse compares like with like
            choices = [value for value in check.choices if value is not None]
            kind = {"choices": choices, "type": type(choices[0])}
        else:
            kind = {"type": FLAG_TYPES[check.kind]}
        if owner.default(name) is None:  # no value unless asked for (self-critical training)
            extra = f"; defaults then: {SELF_CRITICAL_TEXT}" if name == "self_critical" else ""
            meaning = owner.field_help(name).removesuffix(")") + extra + (")" if extra else "")
        else:
            meaning = f"{owner.field_help(name)} (default: {_defaults(name)})"
        group.add_argument(FLAG_NAMES[name], dest=name, default=UNSET, help=meaning, **kind)


def build_parser(description: str) -> argparse.ArgumentParser:
    """train.py's flags, grouped; ``description`` heads ``--help``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    data.add_argument("--num-workers", type=worker_count, default=0, help="DataLoader worker processes (default: 0)")
    data.add_argument(
        "--feature-storage",
        default="hdf5",
        choices=["hdf5", "memory", "device"],
        help="stream features from HDF5, hold them in RAM, or on the accelerator (default: hdf5)",
    )

    model = parser.add_argument_group("model and optimisation (defaults: the full run; --overfit's in brackets)")
    add_config_flags(model)
    model.add_argument("--seed", type=seed, default=231, help="random seed (default: 231, the notebook's)")

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
    """Set ``args.config``: the run's settings, with the flags given replacing fields.

    Also sets ``args.resume`` to a path (the newest ``last.ckpt`` for a bare ``--resume``) and
    ``args.start`` to the system stored in the ``--resume`` or ``--init-from`` checkpoint (or None),
    read and verified once here, before any data is read.

    A new run starts from the overfit or full preset of its decoder. ``--init-from`` takes the
    model (decoder and sizes) from its checkpoint, and ``--self-critical`` the self-critical
    settings over the full run's. ``--resume`` continues the checkpoint's own run: every
    setting is its, unless a flag says otherwise (and model flags must then agree with it).
    """
    if args.init_from is not None and args.resume is not None:
        raise ValueError("--init-from starts a new run from a checkpoint's weights and --resume continues one; "
                         "give one of them")  # fmt: skip
    if args.self_critical is not UNSET and args.init_from is None and args.resume is None:
        raise ValueError("--self-critical fine-tunes a trained model: give its checkpoint with --init-from")
    if args.resume == "last":
        args.resume = find_last_checkpoint(args.log_dir)
    start = args.resume if args.resume is not None else args.init_from
    args.start = load_system(start) if start is not None else None
    stored = args.start.config if args.start is not None else None
    if stored is not None and args.decoder is not UNSET and args.decoder != stored.decoder:
        raise CheckpointError(f"checkpoint {start} was trained with --model {stored.decoder} but this run has "
                              f"{args.decoder}; leave the flag out (the checkpoint's is used) or match it")  # fmt: skip
    if args.resume is not None:
        config = stored
        if args.self_critical is not UNSET and args.self_critical != config.self_critical:
            raise ValueError(f"--resume {args.resume} continues a {config.self_critical or 'cross-entropy'} run; "
                             f"to fine-tune it with --self-critical {args.self_critical}, use --init-from")  # fmt: skip
    else:
        decoder = args.decoder if args.decoder is not UNSET else (stored.decoder if stored else None)
        config = preset(args.overfit is not None, decoder)
        if stored is not None:  # the checkpoint's model: its decoder's sizes and the settings that shape it
            config = config.updated(**{name: getattr(stored, name) for name in stored.fixed_fields()})
        if args.self_critical is not UNSET:
            config = config.updated(**SELF_CRITICAL, self_critical=args.self_critical)
    try:
        args.config = config.updated(**{name: getattr(args, name) for name in CONFIG_FLAGS})
    except ValueError as error:  # the config names its fields; the user typed flags
        names = "|".join(CONFIG_FLAGS[1:])
        raise ValueError(re.sub(r"(?<![\w-])(" + names + r")\b", lambda m: FLAG_NAMES[m[1]], str(error))) from None
    if args.init_from is not None:
        refuse_another_model(args.init_from, stored, args.config)
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


def check_resumable(path: Path | str, stored: CaptioningSystem, system: CaptioningSystem) -> None:
    """The checkpoint's system ``stored`` must hold this run's model: vocabulary, feature width, decoder and sizes."""
    check_model_fits_data(stored.model, system.model.word_to_idx, system.model.input_dim)
    refuse_another_model(path, stored.config, system.config)


def refuse_another_model(path: Path | str, stored: CaptionConfig, config: CaptionConfig) -> None:
    """A CheckpointError naming the first flag whose value would build another model than the checkpoint's."""
    for name in stored.fixed_fields():
        theirs, ours = getattr(stored, name), getattr(config, name)
        if theirs != ours:
            flag = FLAG_NAMES.get(name, name)
            raise CheckpointError(f"checkpoint {path} was trained with {flag} {theirs} but this run has {ours}; "
                                  "leave the flag out (the checkpoint's is used) or match it")  # fmt: skip
