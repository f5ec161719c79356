"""The settings of a run, every default of one, and how a setting is declared.

A setting is declared once, as a dataclass field made by :func:`setting`: its default, the
help line its ``train.py`` flag shows, and the check its value must pass. The flags, the
checkpoint's flat hyperparameters and the error messages are generated from these fields.

* :class:`TrainingConfig`: how a model is trained (step size, schedule, batch, epochs, caption
  length, self-critical baseline), with the presets of cs231n's notebooks (:data:`RUN_PRESETS`).
* :class:`DecoderConfig`: the base of a decoder's own sizes; each decoder's entry in
  ``registry.py`` declares its fields (the Transformer's heads and layers, the RNN's H) and
  their checks, and ``registry.CaptionConfig`` pairs one with a :class:`TrainingConfig`.

This module imports nothing else of the package but ``functional`` (its one positive-integer
check), so the models can read their defaults here (e.g. :data:`MAX_LENGTH`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar

from caption_torch.functional import check_positive_integer

MAX_LENGTH = 30  # longest generated caption: cs231n's sample() default (COCO's captions have <= 17 tokens)


class _Unset:
    """The type of :data:`UNSET`."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "not given": a flag left out, a field left as it is (None is a value, e.g. no baseline)


class Check:
    """A check of one field's value, raising ``ValueError("<name> must ...")``; ``kind`` names it for the CLI."""

    def __init__(self, kind: str, test: Callable[[Any], bool], must: str, choices: tuple = ()) -> None:
        self.kind, self.test, self.must, self.choices = kind, test, must, choices

    def __call__(self, name: str, value: Any) -> None:
        if not self.test(value):
            raise ValueError(f"{name} must {self.must}, got {value!r}")


class _PositiveInteger(Check):
    """``functional.check_positive_integer``, the package's one positive-integer check (numpy integers too)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind, lambda v: True, "be a positive integer")

    def __call__(self, name: str, value: Any) -> None:
        check_positive_integer(name, value)


POSITIVE_INTEGER = _PositiveInteger("positive integer")
POSITIVE = Check("positive number", lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
                 "be positive")  # fmt: skip
# A caption length: a positive integer (the CLI also bounds it, as decoding runs one step per token).
CAPTION_LENGTH = _PositiveInteger("caption length")
UNIT_INTERVAL = Check("fraction", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "be in (0, 1]")


def one_of(*choices: Any) -> Check:
    """A check that the value is one of ``choices`` (``None`` may be one: a value, not "unset")."""
    return Check("choice", lambda v: v in choices, f"be one of {choices}", choices)


def setting(default: Any, help: str, check: Check | None = None) -> Any:
    """A dataclass field: its default, its flag's help line, and the check every value must pass."""
    return field(default=default, metadata={"help": help, "check": check})


class Settings:
    """Frozen dataclasses of settings: each field's check runs on construction; ``updated`` replaces fields."""

    def __post_init__(self) -> None:
        for each in fields(self):
            check = each.metadata.get("check")
            if check is not None:
                check(each.name, getattr(self, each.name))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(each.name for each in fields(cls))

    @classmethod
    def field_help(cls, name: str) -> str:
        return next(each.metadata["help"] for each in fields(cls) if each.name == name)

    @classmethod
    def field_check(cls, name: str) -> Check | None:
        return next(each.metadata.get("check") for each in fields(cls) if each.name == name)

    @classmethod
    def default(cls, name: str) -> Any:
        (value,) = (each.default for each in fields(cls) if each.name == name and each.default is not MISSING)
        return value

    def updated(self, **changes: Any):
        """These settings with the given fields replaced; :data:`UNSET` leaves a field as it is."""
        return replace(self, **{name: value for name, value in changes.items() if value is not UNSET})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DecoderConfig(Settings):
    """A decoder's own sizes: what its weights' shapes depend on, so a checkpoint fixes them.

    Subclasses (``registry.py``, one per decoder) name their decoder and declare its fields.
    """

    name: ClassVar[str]
    # Every decoder embeds its words: cs231n's notebooks use W = 256 for COCO.
    wordvec_dim: int = setting(256, "word vector width W (the Transformer's every layer)", POSITIVE_INTEGER)


@dataclass(frozen=True)
class TrainingConfig(Settings):
    """How a model is trained; the defaults are the full run on the embedded data."""

    # Adam's step size in cs231n's notebooks; stable for both cells at batch 25 to 512.
    lr: float = setting(5e-3, "Adam learning rate", POSITIVE)
    # Per epoch: a short run needs the step to shrink faster than the notebook's 0.95.
    lr_decay: float = setting(0.9, "learning rate multiplier after each epoch (cs231n's lr_decay)", UNIT_INTERVAL)
    # Products big enough to run efficiently, still many steps per epoch.
    batch_size: int = setting(128, "captions per batch", POSITIVE_INTEGER)
    # Val BLEU-4 on the embedded data levels off by then at this lr schedule.
    epochs: int = setting(12, "training epochs", POSITIVE_INTEGER)
    # Also sizes the Transformer's positional table (its checkpoint fixes it).
    max_length: int = setting(MAX_LENGTH, "longest generated caption", CAPTION_LENGTH)
    # None: cross-entropy on captions; "mean"/"greedy": self-critical training with that baseline
    # (batches are then batch_size images).
    self_critical: str | None = setting(
        None, "fine-tune with self-critical training, rewards CIDEr-D, this baseline (needs --init-from)",
        one_of(None, "mean", "greedy"),
    )  # fmt: skip
    # K captions sampled per image by self-critical training, as Luo 2020.
    samples_per_image: int = setting(5, "captions sampled per image by --self-critical", POSITIVE_INTEGER)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.self_critical == "mean" and self.samples_per_image < 2:
            raise ValueError("the mean baseline compares each sample with the others: samples_per_image must be >= 2")


_OVERFIT = dict(batch_size=25, epochs=50)  # cs231n's overfit runs: 50 captions, 2 batches an epoch
# The training settings of each run ("full" or "overfit") of each decoder (by its registry name).
RUN_PRESETS: dict[str, TrainingConfig] = {
    # The full run on the embedded data (the defaults above).
    "full-lstm": TrainingConfig(),
    "full-rnn": TrainingConfig(),
    # The Transformer trains with the Transformer notebook's step size and no decay.
    "full-transformer": TrainingConfig(lr=1e-3, lr_decay=1.0),
    # cs231n's RNN_Captioning notebook: overfit 50 captions, 50 epochs of batch 25 = 100 iterations.
    "overfit-rnn": TrainingConfig(lr_decay=0.95, **_OVERFIT),
    # The assignment's LSTM notebook overfits the same way but decays the step more slowly.
    "overfit-lstm": TrainingConfig(lr_decay=0.995, **_OVERFIT),
    # The Transformer notebook: 100 epochs of batch 25 = 200 iterations, Adam 1e-3, no decay.
    "overfit-transformer": TrainingConfig(lr=1e-3, lr_decay=1.0, batch_size=25, epochs=100),
}
# Self-critical fine-tuning replaces these fields of the full run (the model's sizes come from its checkpoint).
SELF_CRITICAL = dict(
    lr=2e-4,  # a small step: the policy gradient is noisy and starts from a trained model
    lr_decay=1.0,
    batch_size=50,  # images per step, each with samples_per_image samples: 250 captions
    epochs=8,
)
# The LSTM scores higher than the vanilla RNN at the same size and budget; the notebook's overfit run is the RNN's.
DEFAULT_DECODER = {"full": "lstm", "overfit": "rnn"}
