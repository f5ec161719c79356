"""The decoders, each described once: how a config builds it and which config fields fix its weights' shapes.

The system, the CLI's ``--model`` choices and checkpoint loading read this table; the
recurrent cells' own math is looked up in ``functional.CELLS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch

from caption_torch.models.captioner import Captioner
from caption_torch.models.recurrent import CaptioningRNN
from caption_torch.models.transformer import CaptioningTransformer

if TYPE_CHECKING:
    from caption_torch.models.config import CaptionConfig


@dataclass(frozen=True)
class Decoder:
    """How to build one decoder.

    Attributes:
        build: ``(word_to_idx, input_dim, config) -> Captioner``: a decoder fulfilling the contract
            written out in :class:`~caption_torch.models.captioner.Captioner`.
        shape_fields: the config fields its weights' shapes depend on: a checkpoint fixes them.
        loss_label: what its training loss is (the loss plot's axis).
    """

    build: Callable[[Mapping[str, int], int, "CaptionConfig"], Captioner]
    shape_fields: tuple[str, ...]
    loss_label: str = "Loss (summed over words, per caption)"


def _recurrent(cell_type: str) -> Decoder:
    def build(word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig) -> Captioner:
        return CaptioningRNN(word_to_idx, input_dim, config.wordvec_dim, config.hidden_dim, cell_type)

    return Decoder(build, ("wordvec_dim", "hidden_dim"))


def _transformer(word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig) -> Captioner:
    return CaptioningTransformer(word_to_idx, input_dim, config.wordvec_dim, config.num_heads, config.num_layers,
                                 config.max_length)  # fmt: skip


DECODERS: dict[str, Decoder] = {
    "rnn": _recurrent("rnn"),
    "lstm": _recurrent("lstm"),
    # max_length sizes the positional-encoding table the model attends over.
    "transformer": Decoder(
        _transformer,
        ("wordvec_dim", "num_heads", "num_layers", "max_length"),
        loss_label="Loss (per word: summed over words, divided by N * T)",
    ),
}


def build_decoder(
    word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig, dtype: torch.dtype = torch.float32
) -> Captioner:
    """The decoder ``config.decoder`` names, sized by ``config``, with parameters in ``dtype``."""
    return DECODERS[config.decoder].build(word_to_idx, input_dim, config).to(dtype)
