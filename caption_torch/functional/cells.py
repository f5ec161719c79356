"""The recurrent cells, each described once: what the decoders, checks and benchmarks look up by name.

Adding a cell means writing its step and sequence Functions (``steps.py``,
``sequences.py``) and one :class:`RecurrentCell` entry in :data:`CELLS`; the model,
generation and the benchmarks read everything else from here (the CLI's ``--model`` choices
come from ``decoders.DECODERS``, which names a cell per recurrent decoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from caption_torch.functional.sequences import lstm_lookup, rnn_lookup
from caption_torch.functional.steps import lstm_step_projected, rnn_step_projected

# A recurrent state: (h,) for the vanilla RNN, (h, c) for the LSTM; h first, each (N, H).
State = tuple[Tensor, ...]


@dataclass(frozen=True)
class RecurrentCell:
    """What differs between recurrent cells.

    Attributes:
        name: the cell's name on the command line and in checkpoints.
        gates: blocks of H columns in Wx, Wh and b (the pre-activation width is gates * H).
        state_size: tensors in the recurrent state (h first; the others start at zero).
        step: ``(x_projected (N, gH), state, Wh (H, gH)) -> state``: one timestep.
        sequence: ``(index (N, T), table (U, gH), h0 (N, H), Wh, lengths) -> (N, T, H)``: whole
            sequences whose inputs are rows of a table of projections (the training path).
        native: the ``torch.nn`` module with the same cell, for the benchmarks' side-by-side runs.
        native_gate_order: the cell's gate blocks in the order ``native`` stores them.
    """

    name: str
    gates: int
    state_size: int
    step: Callable[[Tensor, State, Tensor], State]
    sequence: Callable[..., Tensor]
    native: str
    native_gate_order: tuple[int, ...]


def _rnn_step(x_projected: Tensor, state: State, Wh: Tensor) -> State:
    (h,) = state
    return (rnn_step_projected(x_projected, h, Wh),)


def _lstm_step(x_projected: Tensor, state: State, Wh: Tensor) -> State:
    h, c = state
    return lstm_step_projected(x_projected, h, c, Wh)


CELLS: dict[str, RecurrentCell] = {
    "rnn": RecurrentCell("rnn", gates=1, state_size=1, step=_rnn_step, sequence=rnn_lookup,
                         native="RNN", native_gate_order=(0,)),
    # cs231n's gate blocks are [i | f | o | g]; nn.LSTM stores [i | f | g | o].
    "lstm": RecurrentCell("lstm", gates=4, state_size=2, step=_lstm_step, sequence=lstm_lookup,
                          native="LSTM", native_gate_order=(0, 1, 3, 2)),
}  # fmt: skip
