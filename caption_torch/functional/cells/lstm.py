"""The LSTM, with cs231n's gate layout; and cs231n's functions on it.

The pre-activations ``a + h @ Wh`` (a = x Wx + b) are split into four H-wide blocks
[i | f | o | g]; i, f, o = sigmoid, g = tanh:

    c' = f * c + i * g        h' = o * tanh(c')
"""

from __future__ import annotations

import torch
from torch import Tensor

from caption_torch.functional._common import _check_recurrent, _sigmoid_backward, _tanh, _tanh_backward
from caption_torch.functional.cells.base import Cell, State
from caption_torch.functional.words import temporal_affine


def _gate_blocks(gates: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four (P, H) column blocks [i, f, o, g] of a (P, 4H) gate tensor, as views."""
    return gates.unflatten(1, (4, gates.shape[1] // 4)).unbind(1)


def _backward_coefficients(gates: Tensor, c_before: Tensor, tanh_c_after: Tensor) -> tuple[Tensor, Tensor]:
    """What turns the gradients w.r.t. (h', c') into gate gradients, for every row at once.

    With c' = f c + i g and h' = o tanh(c'), the total gradient into c' is
    ``grad_c = grad_c' + grad_h' * o (1 - tanh(c')^2)``, and the gradients w.r.t. the
    pre-activations [a_i, a_f, a_o, a_g] are ``[grad_c, grad_c, grad_h', grad_c] * coefficients``.

    Args:
        gates: (P, 4H) activations [i, f, o, g].
        c_before: (P, H) cell state before the step.
        tanh_c_after: (P, H) tanh of the cell state after it (saved by the forward pass,
            which computes it anyway, so backward does not compute it again).

    Returns:
        ``(coefficients (P, 4H), c_from_h (P, H))`` where c_from_h = o (1 - tanh(c')^2).
    """
    i, f, o, g = _gate_blocks(gates)
    coefficients = torch.empty_like(gates)
    coef_i, coef_f, coef_o, coef_g = _gate_blocks(coefficients)
    _sigmoid_backward.grad_input(g, i, grad_input=coef_i)  # g * sigmoid'(a_i)
    _sigmoid_backward.grad_input(c_before, f, grad_input=coef_f)  # c * sigmoid'(a_f)
    _sigmoid_backward.grad_input(tanh_c_after, o, grad_input=coef_o)  # tanh(c') sigmoid'(a_o)
    _tanh_backward.grad_input(i, g, grad_input=coef_g)  # i * tanh'(a_g)
    return coefficients, _tanh_backward(o, tanh_c_after)


class LSTMCell(Cell):
    """cs231n's LSTM. Forward keeps the gate activations (in ``a`` itself when it is scratch) and
    tanh(c'); backward turns them into per-row coefficients for every step at once, outside
    the sequential loop, which then only scales them by the gradients into h' and c'."""

    name = "lstm"
    gates = 4
    state_names = ("h", "c")
    native = "LSTM"
    native_gate_order = (0, 1, 3, 2)  # nn.LSTM stores the blocks [i | f | g | o]

    def forward_rows(self, a: Tensor, a_is_scratch: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        gates = a if a_is_scratch else torch.empty_like(a)  # (P, 4H): pre-activations, then activations
        H = gates.shape[1] // 4
        tanh_c = gates.new_empty(gates.shape[0], H)
        return (a, gates, gates[:, : 3 * H], *_gate_blocks(gates), tanh_c), (gates, tanh_c)

    def forward_step(self, hidden: Tensor, before: State, after: State, *rows: Tensor) -> None:
        a, gates, ifo, i, f, o, g, tanh_c_next = rows
        (_, c), (h_next, c_next) = before, after
        torch.add(a, hidden, out=gates)  # (n, 4H) pre-activations
        ifo.sigmoid_()  # i, f and o, activated in one op
        _tanh(g, out=g)
        torch.mul(i, g, out=c_next).addcmul_(f, c)  # c' = f c + i g
        torch.mul(_tanh(c_next, out=tanh_c_next), o, out=h_next)  # h' = o tanh(c')

    def backward_rows(self, saved: tuple[Tensor, ...], before: State, after: State) -> tuple[Tensor, Tensor, tuple]:
        gates, tanh_c = saved
        # The coefficients of every step at once; the steps turn them into grad_a in place.
        grad_a, c_from_h = _backward_coefficients(gates, before[1], tanh_c)
        H = tanh_c.shape[1]
        return grad_a, grad_a, (*_gate_blocks(grad_a), c_from_h, gates[:, H : 2 * H])

    def backward_step(self, grad_h: Tensor, carries: State, *rows: Tensor) -> tuple[None, State]:
        grad_i, grad_f, grad_o, grad_g, c_from_h, f = rows
        (carry,) = carries
        grad_c = carry.addcmul_(grad_h, c_from_h)  # total gradient into c'
        grad_i.mul_(grad_c)
        grad_f.mul_(grad_c)
        grad_o.mul_(grad_h)
        grad_g.mul_(grad_c)
        return None, (grad_c.mul_(f),)  # into c


LSTM = LSTMCell()


def lstm_step(x: Tensor, prev_h: Tensor, prev_c: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step.

    Args:
        x: (N, D) inputs of this timestep.
        prev_h, prev_c: (N, H) previous hidden and cell states.
        Wx: (D, 4H), Wh: (H, 4H), b: (4H,) weights for the gates [i, f, o, g].

    Returns:
        ``(next_h, next_c)``, each (N, H).
    """
    _check_recurrent(x, prev_h, Wx, Wh, b, gates=4, x_ndim=2)
    return lstm_step_projected(temporal_affine(x[:, None], Wx, b)[:, 0], prev_h, prev_c, Wh)


def lstm_step_projected(x_projected: Tensor, prev_h: Tensor, prev_c: Tensor, Wh: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`lstm_step` for an input already projected: ``lstm_step_projected(x @ Wx + b, h, c, Wh)``.

    Args:
        x_projected: (N, 4H) input projection.
        prev_h, prev_c: (N, H), Wh: (H, 4H) as :func:`lstm_step`.

    Returns:
        ``(next_h, next_c)``, each (N, H).
    """
    next_h, next_c = LSTM.step(x_projected, (prev_h, prev_c), Wh)
    return next_h, next_c


def lstm(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor, lengths: Tensor | None = None) -> Tensor:
    """An LSTM run over a whole sequence, initial cell state zero: ``lstm_projected(temporal_affine(x, Wx, b), ...)``.

    Args:
        x: (N, T, D) input sequence.
        h0: (N, H) initial hidden state.
        Wx: (D, 4H), Wh: (H, 4H), b: (4H,) as in :func:`lstm_step`.
        lengths: optional (N,) non-increasing step counts, as :func:`~caption_torch.functional.rnn`.

    Returns:
        (N, T, H) hidden states of every timestep (a view, as ``rnn``'s).
    """
    _check_recurrent(x, h0, Wx, Wh, b, gates=4, x_ndim=3)
    return lstm_projected(temporal_affine(x, Wx, b), h0, Wh, lengths)


def lstm_projected(x_projected: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`lstm` for inputs already projected: ``lstm(x, h0, Wx, Wh, b) == lstm_projected(x @ Wx + b, h0, Wh)``.

    Args:
        x_projected: (N, T, 4H) input projections.
        h0: (N, H), Wh: (H, 4H), lengths: as :func:`lstm`.

    Returns:
        (N, T, H) hidden states.
    """
    return LSTM.projected(x_projected, h0, Wh, lengths)


def lstm_lookup(index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`lstm_projected` reading its inputs from a table: ``lstm_projected(table[index], h0, Wh, lengths)``.

    No (N, T, 4H) input tensor, and one gradient row per table row (see
    :func:`~caption_torch.functional.sequences.recurrence_lookup`).

    Args:
        index: (N, T) integer rows of ``table``, each in [0, U).
        table: (U, 4H) input projections, one row per distinct input (e.g. word).
        h0: (N, H), Wh: (H, 4H), lengths: as :func:`lstm`.

    Returns:
        (N, T, H) hidden states.
    """
    return LSTM.sequence(index, table, h0, Wh, lengths)
