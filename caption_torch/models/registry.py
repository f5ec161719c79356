"""The decoders, each described once: its own sizes (fields, defaults, checks), how to build it, its presets.

A decoder's entry in :data:`DECODERS` owns a :class:`~caption_torch.models.config.DecoderConfig`
subclass declaring the fields its weights' shapes depend on; :class:`CaptionConfig` pairs one with
the run's :class:`~caption_torch.models.config.TrainingConfig`. The system, the CLI's flags and
``--model`` choices and checkpoint loading read this table; the recurrent cells' own math is
looked up in ``functional.CELLS``.

Adding a size to a decoder is one field in its config class (and its use in ``build``): the
flag, its help, the checkpoint's hyperparameters and the check that a checkpoint fits follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch

from caption_torch.models.captioner import Captioner
from caption_torch.models.config import (
    DEFAULT_DECODER,
    POSITIVE_INTEGER,
    RUN_PRESETS,
    UNSET,
    DecoderConfig,
    TrainingConfig,
    one_of,
    setting,
)
from caption_torch.models.recurrent import CaptioningRNN
from caption_torch.models.transformer import CaptioningTransformer
from caption_torch.models.transformer_layers import CS231N_VERSIONS


@dataclass(frozen=True)
class RecurrentConfig(DecoderConfig):
    """The sizes of a vanilla RNN or LSTM decoder (``CaptioningRNN``)."""

    # cs231n's notebooks use 512 for COCO.
    hidden_dim: int = setting(512, "hidden state width H of the RNN/LSTM", POSITIVE_INTEGER)


class RNNConfig(RecurrentConfig):
    name: ClassVar[str] = "rnn"


class LSTMConfig(RecurrentConfig):
    name: ClassVar[str] = "lstm"


@dataclass(frozen=True)
class TransformerConfig(DecoderConfig):
    """The sizes of the Transformer decoder (``CaptioningTransformer``); every layer is ``wordvec_dim`` wide."""

    name: ClassVar[str] = "transformer"
    # The Transformer notebook's 2 heads of W/2 = 128.
    num_heads: int = setting(2, "Transformer attention heads", POSITIVE_INTEGER)
    # The Transformer notebook's 2 decoder layers.
    num_layers: int = setting(2, "Transformer decoder layers", POSITIVE_INTEGER)
    # The layer cs231n taught from that year: its modules, names and activation fix the weights.
    cs231n_version: int = setting(
        2021,
        "Transformer decoder layer: " + "; ".join(f"{year}: {text}" for year, text in CS231N_VERSIONS.items()),
        one_of(*CS231N_VERSIONS),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.wordvec_dim % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide wordvec_dim ({self.wordvec_dim})")
        if self.wordvec_dim % 2:
            raise ValueError(
                f"wordvec_dim ({self.wordvec_dim}) must be even: the positional encoding pairs sines and cosines"
            )


@dataclass(frozen=True)
class Decoder:
    """One decoder: its sizes and how a config builds it.

    Attributes:
        config: its :class:`DecoderConfig` subclass; every field fixes its weights' shapes.
        build: ``(word_to_idx, input_dim, config) -> Captioner``.
        run_fields: training settings that also fix its weights (the Transformer's positional table
            is ``max_length`` long), so a checkpoint fixes them too.
        loss_label: what its training loss is (the loss plot's axis).
    """

    config: type[DecoderConfig]
    build: Callable[[Mapping[str, int], int, "CaptionConfig"], Captioner]
    run_fields: tuple[str, ...] = ()
    loss_label: str = "Loss (summed over words, per caption)"


def _recurrent(word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig) -> Captioner:
    model: RecurrentConfig = config.model
    return CaptioningRNN(word_to_idx, input_dim, model.wordvec_dim, model.hidden_dim, model.name)


def _transformer(word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig) -> Captioner:
    model: TransformerConfig = config.model
    return CaptioningTransformer(word_to_idx, input_dim, model.wordvec_dim, model.num_heads, model.num_layers,
                                 config.training.max_length, cs231n_version=model.cs231n_version)  # fmt: skip


DECODERS: dict[str, Decoder] = {
    "rnn": Decoder(RNNConfig, _recurrent),
    "lstm": Decoder(LSTMConfig, _recurrent),
    "transformer": Decoder(
        TransformerConfig,
        _transformer,
        run_fields=("max_length",),
        loss_label="Loss (per word: summed over words, divided by N * T)",
    ),
}


def _decoder(name: str) -> Decoder:
    if name not in DECODERS:
        raise ValueError(f"decoder must be one of {tuple(DECODERS)}, got {name!r}")
    return DECODERS[name]


def _default_model() -> DecoderConfig:
    return DECODERS[DEFAULT_DECODER["full"]].config()


@dataclass(frozen=True)
class CaptionConfig:
    """A run's whole config: the decoder's sizes (``model``) and how it is trained (``training``).

    Outside, it reads as one flat set of fields (``decoder``, each size, each training setting):
    :meth:`of` and :meth:`updated` take them by name, :meth:`flat` gives them as plain values
    (a checkpoint's hyperparameters) and :meth:`from_flat` reads them back.
    """

    model: DecoderConfig = field(default_factory=_default_model)
    training: TrainingConfig = TrainingConfig()

    def __post_init__(self) -> None:
        expected = _decoder(self.model.name).config
        if type(self.model) is not expected:
            raise TypeError(f"the {self.model.name} decoder's sizes are a {expected.__name__}")

    @property
    def decoder(self) -> str:
        """The decoder's name in :data:`DECODERS`."""
        return self.model.name

    @classmethod
    def of(cls, decoder: str = DEFAULT_DECODER["full"], **changes: Any) -> CaptionConfig:
        """The config of ``decoder`` with its default sizes and training, then ``changes`` (flat field names)."""
        return cls(_decoder(decoder).config()).updated(**changes)

    def __getattr__(self, name: str) -> Any:
        """A field of the sizes or the training settings by its flat name (``config.lr``, ``config.hidden_dim``)."""
        if name.startswith("_") or name in ("model", "training"):
            raise AttributeError(name)
        if name in TrainingConfig.names():
            return getattr(self.training, name)
        if name in self.model.names():
            return getattr(self.model, name)
        raise AttributeError(f"the {self.decoder} decoder's config has no field {name!r}")

    def updated(self, **changes: Any) -> CaptionConfig:
        """This config with fields replaced by flat name; :data:`UNSET` leaves one as it is, ``None`` is a value.

        ``decoder`` switches to another decoder's default sizes, keeping the sizes both have. A size the
        decoder does not have is refused, naming the decoder's own.
        """
        changes = {name: value for name, value in changes.items() if value is not UNSET}
        model = self.model
        if "decoder" in changes:
            kept = {name: getattr(model, name) for name in model.names()}
            new = _decoder(changes.pop("decoder")).config
            model = new(**{name: value for name, value in kept.items() if name in new.names()})
        sizes = {name: changes.pop(name) for name in list(changes) if name in model.names()}
        training = {name: changes.pop(name) for name in list(changes) if name in TrainingConfig.names()}
        if changes:
            unknown = [name for name in changes if name not in all_size_fields()]
            if unknown:
                raise TypeError(f"CaptionConfig has no field {unknown[0]!r}")
            verb = "does" if len(changes) == 1 else "do"
            raise ValueError(f"{' and '.join(changes)} {verb} not apply to the {model.name} decoder "
                             f"(its sizes: {', '.join(model.names())})")  # fmt: skip
        return CaptionConfig(model.updated(**sizes), self.training.updated(**training))

    def flat(self) -> dict[str, Any]:
        """Every field as a plain value: ``decoder``, the sizes, the training settings (a checkpoint's form)."""
        return {"decoder": self.decoder, **self.model.as_dict(), **self.training.as_dict()}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> CaptionConfig:
        """The config ``values`` name (e.g. a checkpoint's hyperparameters); other keys, and the sizes of
        other decoders (earlier checkpoints stored every decoder's), are ignored."""
        decoder = values.get("decoder", DEFAULT_DECODER["full"])
        names = {"decoder", *_decoder(decoder).config.names(), *TrainingConfig.names()}
        return cls.of(**{name: value for name, value in values.items() if name in names})

    def fixed_fields(self) -> tuple[str, ...]:
        """The fields a checkpoint of this config fixes: the decoder, its sizes, and the run settings it uses."""
        return ("decoder", *self.model.names(), *DECODERS[self.decoder].run_fields)


def all_size_fields() -> tuple[str, ...]:
    """Every decoder's size fields, each once, in the table's order."""
    names: dict[str, None] = {}
    for entry in DECODERS.values():
        names.update(dict.fromkeys(entry.config.names()))
    return tuple(names)


def decoders_with(name: str) -> tuple[str, ...]:
    """The decoders that have the size ``name``."""
    return tuple(decoder for decoder, entry in DECODERS.items() if name in entry.config.names())


def preset(overfit: bool, decoder: str | None = None) -> CaptionConfig:
    """The preset a run starts from: the overfit or full run of ``decoder`` (default: that run's own)."""
    run = "overfit" if overfit else "full"
    decoder = decoder or DEFAULT_DECODER[run]
    return CaptionConfig(_decoder(decoder).config(), RUN_PRESETS[f"{run}-{decoder}"])


PRESETS: dict[str, CaptionConfig] = {name: preset(name.startswith("overfit"), name.split("-", 1)[1])
                                     for name in RUN_PRESETS}  # fmt: skip


def build_decoder(
    word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig, dtype: torch.dtype = torch.float32
) -> Captioner:
    """The decoder ``config.decoder`` names, sized by ``config``, with parameters in ``dtype``."""
    return DECODERS[config.decoder].build(word_to_idx, input_dim, config).to(dtype)
