"""The vanilla RNN: ``h' = tanh(a + h @ Wh)`` with ``a = x @ Wx + b``; and cs231n's functions on it."""

from __future__ import annotations

import torch
from torch import Tensor

from caption_torch.functional._common import _check_recurrent, _tanh, _tanh_backward
from caption_torch.functional.cells.base import Cell, State
from caption_torch.functional.words import temporal_affine


class RNNCell(Cell):
    """``h' = tanh(a + h @ Wh)``: one gate block; backward needs only h' (tanh' = 1 - h'^2)."""

    name = "rnn"
    gates = 1
    native = "RNN"  # nn.RNN's default nonlinearity is tanh
    native_gate_order = (0,)

    def forward_rows(self, a: Tensor, a_is_scratch: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        return (a,), ()

    def forward_step(self, hidden: Tensor, before: State, after: State, a: Tensor) -> None:
        (h_next,) = after
        _tanh(torch.add(a, hidden, out=h_next), out=h_next)

    def backward_rows(self, saved: tuple[Tensor, ...], before: State, after: State) -> tuple[Tensor, Tensor, tuple]:
        (h_after,) = after
        grad_a = torch.empty_like(h_after)  # (P, H): also the gradient w.r.t. h @ Wh, the same sum
        return grad_a, grad_a, (h_after, grad_a)

    def backward_step(self, grad_h: Tensor, carries: State, h_next: Tensor, grad_a: Tensor) -> tuple[None, State]:
        _tanh_backward.grad_input(grad_h, h_next, grad_input=grad_a)
        return None, carries


RNN = RNNCell()


def rnn_step(x: Tensor, prev_h: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor) -> Tensor:
    """One vanilla-RNN step.

    Args:
        x: (N, D) inputs of this timestep.
        prev_h: (N, H) hidden state of the previous timestep.
        Wx: (D, H) input-to-hidden weights.
        Wh: (H, H) hidden-to-hidden weights.
        b: (H,) bias.

    Returns:
        (N, H) next hidden state ``tanh(x @ Wx + prev_h @ Wh + b)``.
    """
    _check_recurrent(x, prev_h, Wx, Wh, b, gates=1, x_ndim=2)
    return rnn_step_projected(temporal_affine(x[:, None], Wx, b)[:, 0], prev_h, Wh)


def rnn_step_projected(x_projected: Tensor, prev_h: Tensor, Wh: Tensor) -> Tensor:
    """:func:`rnn_step` for an input already projected: ``rnn_step_projected(x @ Wx + b, prev_h, Wh)``.

    Args:
        x_projected: (N, H) input projection (e.g. rows of a per-word table, as generation uses).
        prev_h: (N, H), Wh: (H, H) as :func:`rnn_step`.

    Returns:
        (N, H) next hidden state.
    """
    (next_h,) = RNN.step(x_projected, (prev_h,), Wh)
    return next_h


def rnn(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor, lengths: Tensor | None = None) -> Tensor:
    """A vanilla RNN run over a whole sequence: ``rnn_projected(temporal_affine(x, Wx, b), h0, Wh, lengths)``.

    Args:
        x: (N, T, D) input sequence.
        h0: (N, H) initial hidden state.
        Wx: (D, H), Wh: (H, H), b: (H,) as in :func:`rnn_step`.
        lengths: optional (N,) non-increasing integers in [0, T]: sequence n needs only its
            first lengths[n] steps; its later outputs are zero and get no gradient.

    Returns:
        (N, T, H) hidden states of every timestep (h0 not included): a time-major (transposed)
        view made inside the Function, which autograd refuses to change in place; change a copy.
    """
    _check_recurrent(x, h0, Wx, Wh, b, gates=1, x_ndim=3)
    return rnn_projected(temporal_affine(x, Wx, b), h0, Wh, lengths)


def rnn_projected(x_projected: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`rnn` for inputs already projected: ``rnn(x, h0, Wx, Wh, b) == rnn_projected(x @ Wx + b, h0, Wh)``.

    Args:
        x_projected: (N, T, H) input projections (for rows of a table, :func:`rnn_lookup` builds no (N, T, H) copy).
        h0: (N, H), Wh: (H, H), lengths: as :func:`rnn`.

    Returns:
        (N, T, H) hidden states.
    """
    return RNN.projected(x_projected, h0, Wh, lengths)


def rnn_lookup(index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`rnn_projected` reading its inputs from a table: ``rnn_projected(table[index], h0, Wh, lengths)``.

    The padded (N, T, H) inputs ``table[index]`` are never built (see
    :func:`~caption_torch.functional.sequences.recurrence_lookup`).

    Args:
        index: (N, T) integer rows of ``table``, each in [0, U).
        table: (U, H) input projections, one row per distinct input (e.g. word).
        h0: (N, H), Wh: (H, H), lengths: as :func:`rnn`.

    Returns:
        (N, T, H) hidden states.
    """
    return RNN.sequence(index, table, h0, Wh, lengths)
