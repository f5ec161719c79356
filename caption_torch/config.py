"""One config: the model's sizes and the optimisation settings of a run, and the named presets.

Every default lives here; ``CaptioningSystem``, ``train.py`` and checkpoint loading read
them from :class:`CaptionConfig` (``CaptioningRNN`` keeps cs231n's own signature and
defaults, and is built from a config by the system).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from .functional import CELLS


@dataclass(frozen=True)
class CaptionConfig:
    """A training run's model and optimisation settings; the defaults are the full run on the embedded data."""

    cell_type: str = "lstm"  # the LSTM scores higher than the vanilla RNN at the same size and budget
    wordvec_dim: int = 256  # W: cs231n's notebooks use 256 for COCO
    hidden_dim: int = 512  # H: cs231n's notebooks use 512 for COCO
    lr: float = 5e-3  # Adam's step size in cs231n's notebooks; stable for both cells at batch 25 to 512
    lr_decay: float = 0.9  # per epoch: a short run needs the step to shrink faster than the notebook's 0.95
    batch_size: int = 128  # captions per step: products big enough to run efficiently, still many steps per epoch
    epochs: int = 12  # val BLEU-4 on the embedded data levels off by then at this lr schedule
    max_length: int = 30  # longest generated caption: cs231n's sample() default; COCO captions have < 17 words

    def __post_init__(self) -> None:
        if self.cell_type not in CELLS:
            raise ValueError(f"cell_type must be one of {tuple(CELLS)}, got {self.cell_type!r}")
        for name in ("wordvec_dim", "hidden_dim", "batch_size", "epochs", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")

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


# Fields of the config that fix the shapes of a model's weights: a checkpoint cannot change them.
MODEL_FIELDS = ("cell_type", "wordvec_dim", "hidden_dim")

PRESETS: dict[str, CaptionConfig] = {
    # The full run on the embedded data (the defaults above).
    "full": CaptionConfig(),
    # cs231n's RNN_Captioning notebook: overfit 50 captions, 50 epochs of batch 25 = 100 iterations.
    "overfit": CaptionConfig(cell_type="rnn", lr_decay=0.95, batch_size=25, epochs=50),
    # The assignment's LSTM notebook overfits the same way but decays the step more slowly.
    "overfit-lstm": CaptionConfig(cell_type="lstm", lr_decay=0.995, batch_size=25, epochs=50),
}


def preset(overfit: bool, cell_type: str | None = None) -> CaptionConfig:
    """The preset a run starts from: an overfit run (with its cell's decay) or the full run."""
    if not overfit:
        return PRESETS["full"].updated(cell_type=cell_type)
    return PRESETS["overfit-lstm" if cell_type == "lstm" else "overfit"].updated(cell_type=cell_type)
