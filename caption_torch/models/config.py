"""One config: the model's sizes and the optimisation settings of a run, and the named presets.

Every default lives here; ``CaptioningSystem``, ``train.py`` and checkpoint loading read
them from :class:`CaptionConfig` (``CaptioningRNN`` and ``CaptioningTransformer`` keep
cs231n's own signatures and defaults, and ``decoders.py`` builds them from a config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from caption_torch.functional import check_positive_integer
from caption_torch.models.registry import DECODERS


@dataclass(frozen=True)
class CaptionConfig:
    """A training run's model and optimisation settings; the defaults are the full run on the embedded data."""

    decoder: str = "lstm"  # the LSTM scores higher than the vanilla RNN at the same size and budget
    wordvec_dim: int = 256  # W: cs231n's notebooks use 256 for COCO (the Transformer's every layer is W wide)
    hidden_dim: int = 512  # H of the RNN/LSTM: cs231n's notebooks use 512 for COCO
    num_heads: int = 2  # Transformer only: the Transformer notebook's 2 heads of W/2 = 128
    num_layers: int = 2  # Transformer only: the Transformer notebook's 2 decoder layers
    lr: float = 5e-3  # Adam's step size in cs231n's notebooks; stable for both cells at batch 25 to 512
    lr_decay: float = 0.9  # per epoch: a short run needs the step to shrink faster than the notebook's 0.95
    batch_size: int = 128  # captions per step: products big enough to run efficiently, still many steps per epoch
    epochs: int = 12  # val BLEU-4 on the embedded data levels off by then at this lr schedule
    max_length: int = 30  # longest caption: cs231n's sample() default (COCO's have <= 17 tokens); sizes the
    # Transformer's positional table
    self_critical: str | None = None  # None: cross-entropy on captions; "mean"/"greedy": self-critical training
    # with that baseline (batches are then batch_size images)
    samples_per_image: int = 5  # K captions sampled per image by self-critical training, as Luo 2020

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {tuple(DECODERS)}, got {self.decoder!r}")
        for name in ("wordvec_dim", "hidden_dim", "num_heads", "num_layers", "batch_size", "epochs", "max_length",
                     "samples_per_image"):  # fmt: skip
            check_positive_integer(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.self_critical not in (None, "mean", "greedy"):
            raise ValueError(f"self_critical must be None, 'mean' or 'greedy', got {self.self_critical!r}")
        if self.self_critical == "mean" and self.samples_per_image < 2:
            raise ValueError("the mean baseline compares each sample with the others: samples_per_image must be >= 2")
        if self.decoder == "transformer" and self.wordvec_dim % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide wordvec_dim ({self.wordvec_dim})")
        if self.decoder == "transformer" and self.wordvec_dim % 2:
            raise ValueError(
                f"wordvec_dim ({self.wordvec_dim}) must be even: the positional encoding pairs sines and cosines"
            )

    def updated(self, **changes: Any) -> CaptionConfig:
        """This config with the given fields replaced; ``None`` values leave a field as it is."""
        return replace(self, **{name: value for name, value in changes.items() if value is not None})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CaptionConfig:
        """The config named by ``values`` (e.g. a checkpoint's hyperparameters); other keys are ignored."""
        names = {field.name for field in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def shape_fields(decoder: str) -> tuple[str, ...]:
    """The config fields a checkpoint of this decoder fixes: its name and what sizes its weights."""
    return ("decoder", *DECODERS[decoder].shape_fields)


_OVERFIT = dict(batch_size=25, epochs=50)  # cs231n's overfit runs: 50 captions, 2 batches an epoch
PRESETS: dict[str, CaptionConfig] = {
    # The full run on the embedded data (the defaults above), per decoder.
    "full-lstm": CaptionConfig(),
    "full-rnn": CaptionConfig(decoder="rnn"),
    # The Transformer trains with the Transformer notebook's step size and no decay.
    "full-transformer": CaptionConfig(decoder="transformer", lr=1e-3, lr_decay=1.0),
    # cs231n's RNN_Captioning notebook: overfit 50 captions, 50 epochs of batch 25 = 100 iterations.
    "overfit-rnn": CaptionConfig(decoder="rnn", lr_decay=0.95, **_OVERFIT),
    # The assignment's LSTM notebook overfits the same way but decays the step more slowly.
    "overfit-lstm": CaptionConfig(decoder="lstm", lr_decay=0.995, **_OVERFIT),
    # The Transformer notebook: 100 epochs of batch 25 = 200 iterations, Adam 1e-3, no decay.
    "overfit-transformer": CaptionConfig(decoder="transformer", lr=1e-3, lr_decay=1.0, batch_size=25, epochs=100),
}
# Self-critical fine-tuning replaces these fields of the full run (the model's sizes come from its checkpoint).
SELF_CRITICAL = dict(
    lr=2e-4,  # a small step: the policy gradient is noisy and starts from a trained model
    lr_decay=1.0,
    batch_size=50,  # images per step, each with samples_per_image samples: 250 captions
    epochs=8,
)
DEFAULT_DECODER = {"full": "lstm", "overfit": "rnn"}  # the notebook's overfit run is the vanilla RNN's


def preset(overfit: bool, decoder: str | None = None) -> CaptionConfig:
    """The preset a run starts from: the overfit or full run of ``decoder`` (default: that run's own)."""
    run = "overfit" if overfit else "full"
    return PRESETS[f"{run}-{decoder or DEFAULT_DECODER[run]}"]
