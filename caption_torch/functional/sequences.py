"""Whole sequences: one Function per sequence runs the time loop forward and backward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from caption_torch.functional._common import (
    _HALF_DTYPES,
    _apply_autocast,
    _check_dim,
    _check_float,
    _check_projected,
    _check_recurrent,
    _check_same_dtype,
    _check_token_ids,
    _mm,
    _tanh,
    _times,
)
from caption_torch.functional.steps import _gate_blocks, _lstm_backward_coefficients, _tanh_backward
from caption_torch.functional.words import temporal_affine

# --------------------------------------------------------------------------- #
# Sequences: one Function runs the whole time loop, forward and backward
# --------------------------------------------------------------------------- #
# Inside, rows are "packed" time-major: step 0's sequences, then step 1's, ... and a
# sequence that has finished (t >= lengths[n]; lengths sorted, non-increasing) is
# simply absent, so no product or elementwise op ever touches padding:
#
#     x (N, T, D) ─pack─► (P, D) ─one GEMM─► pre-activations (P, gH)      P = sum(lengths)
#     (or, *_lookup: index (N, T) ─pack─► (P,) row numbers ─rows of the table─► the same)
#     states (N + P, H) = [h0 | h_1 of step 0's rows | h_2 of step 1's rows | ...]
#     step t reads h_t = rows of block t, first n_t of them (n_t = sequences still running)
#     output (N, T, H) ◄─unpack─ states[N:]  (zeros where finished; a transposed view)
#
# Without lengths every sequence runs all T steps; packing is then the identity and
# costs no copy.


class _Packing:
    """Where each (timestep, sequence) pair lives in the packed layout above.

    Args:
        lengths: (N,) non-increasing step counts on the host (what :func:`_check_lengths`
            returns: the loop needs plain ints anyway), or None for all T.
        device: where the packing index goes (the inputs' device).
    """

    def __init__(self, lengths: np.ndarray | None, N: int, T: int, device: torch.device) -> None:
        self.N, self.T = N, T
        if lengths is None:
            self.active, self.index = [N] * T, None
        else:
            running = lengths[None, :] > np.arange(T)[:, None]  # (T, N)
            self.active = running.sum(1).tolist()
            full = all(n == N for n in self.active)
            self.index = None if full else torch.from_numpy(np.flatnonzero(running)).to(device)
        self.total = sum(self.active)
        self.run_sizes = [n for n in self.active if n]  # n_t of the steps that run: always the first ones

    def steps(self, packed: Tensor) -> tuple[Tensor, ...]:
        """Views of the rows of every step that runs (n_t > 0) of a packed (P, ...) tensor.

        The loops take all their per-step views from here, made in one call each before
        the loop starts: slicing inside the loop costs more Python time than the small
        elementwise ops it feeds.
        """
        return packed.split(self.run_sizes)

    def previous_steps(self, states: Tensor) -> list[Tensor]:
        """Views of h_t, the rows of the (N + P, H) buffer that step t reads, for every step that runs."""
        blocks = states.split([self.N, *self.active])
        return [block[:n] for block, n in zip(blocks, self.run_sizes)]

    def pack(self, time_major: Tensor) -> Tensor:
        """(T*N, C) time-major rows -> (P, C) rows of running sequences."""
        return time_major if self.index is None else time_major.index_select(0, self.index)

    def unpack(self, packed: Tensor) -> Tensor:
        """(P, C) -> (N, T, C), zeros where a sequence has finished."""
        C = packed.shape[1]
        if self.index is None:
            return packed.view(self.T, self.N, C).transpose(0, 1)
        full = packed.new_zeros(self.T * self.N, C).index_copy_(0, self.index, packed)
        return full.view(self.T, self.N, C).transpose(0, 1)

    def previous_states(self, states: Tensor) -> Tensor:
        """(P, H): h_t for every packed row of step t, one matrix for the weight gradient."""
        if self.index is None:
            return states[: self.total]  # [h0, h_1..h_{T-1}], already contiguous
        blocks = self.previous_steps(states)
        return torch.cat(blocks) if blocks else states[:0]  # no step ran: no rows


def _time_major(x: Tensor) -> Tensor:
    """(N, T, C) -> (T*N, C) rows in time-major order; free when x is a transposed time-major tensor."""
    N, T, C = x.shape
    return x.transpose(0, 1).reshape(T * N, C)


def _rnn_forward_loop(pre_activations: Tensor, h0: Tensor, Wh: Tensor, packing: _Packing) -> Tensor:
    """states (N + P, H) from packed pre-activations (P, H): h_{t+1} = tanh(pre_t + h_t @ Wh)."""
    states = pre_activations.new_empty(packing.N + packing.total, h0.shape[1])
    states[: packing.N] = h0
    times_Wh = _times(Wh)
    steps = zip(packing.steps(pre_activations), packing.previous_steps(states), packing.steps(states[packing.N :]))
    for pre, h, h_next in steps:
        _tanh(torch.add(pre, times_Wh(h), out=h_next), out=h_next)
    return states


def _into_previous(through_recurrence: Tensor, direct: Tensor) -> Tensor:
    """Gradient into h_t: from step t (its n_t rows) plus the loss at h_t directly (n_{t-1} >= n_t rows)."""
    n = through_recurrence.shape[0]
    if direct.shape[0] == n:
        return through_recurrence.add_(direct)
    total = direct.clone()
    total[:n] += through_recurrence
    return total


def _rnn_backward_loop(grad_out: Tensor, states: Tensor, Wh: Tensor, packing: _Packing) -> Tensor:
    """grad_a (P, H): the gradient w.r.t. every packed pre-activation, by backprop through time.

    Args:
        grad_out: (P, H) packed gradient w.r.t. the outputs.
    """
    grad_a = torch.empty_like(grad_out)
    outputs, grad_outs, grads = (packing.steps(t) for t in (states[packing.N :], grad_out, grad_a))
    times_Wh_T = _times(Wh.T)
    grad_h = grad_outs[-1] if grad_outs else None
    for t in range(len(grads) - 1, -1, -1):
        step = _tanh_backward.grad_input(grad_h, outputs[t], grad_input=grads[t])
        if t > 0:
            grad_h = _into_previous(times_Wh_T(step), grad_outs[t - 1])
    return grad_a


def _lstm_forward_loop(gates: Tensor, h0: Tensor, Wh: Tensor, packing: _Packing) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LSTM over packed pre-activations ``gates`` (P, 4H), activating them in place.

    Returns:
        ``(states, cells, tanh_cells)``: [h0 | h_1 ...] and [0 | c_1 ...], each (N + P, H),
        and tanh(c_1 ...) (P, H), which backward needs, all packed.
    """
    N, H = packing.N, h0.shape[1]
    states, cells = gates.new_empty(N + packing.total, H), gates.new_empty(N + packing.total, H)
    tanh_cells = gates.new_empty(packing.total, H)
    states[:N], cells[:N] = h0, 0
    times_Wh = _times(Wh)
    i, f, o, g = _gate_blocks(gates)
    sigmoid_gates = gates[:, : 3 * H]  # i, f and o, activated in one op
    per_step = (gates, sigmoid_gates, i, f, o, g, states[N:], cells[N:], tanh_cells)
    steps = zip(*map(packing.steps, per_step), packing.previous_steps(states), packing.previous_steps(cells))
    for a, ifo, i_t, f_t, o_t, g_t, h_next, c_next, tanh_c_next, h, c in steps:
        a.add_(times_Wh(h))  # (n_t, 4H) pre-activations
        ifo.sigmoid_()
        _tanh(g_t, out=g_t)
        torch.mul(i_t, g_t, out=c_next).addcmul_(f_t, c)  # c' = f c + i g
        torch.mul(_tanh(c_next, out=tanh_c_next), o_t, out=h_next)  # h' = o tanh(c')
    return states, cells, tanh_cells


def _lstm_backward_loop(
    grad_out: Tensor, gates: Tensor, cells: Tensor, tanh_cells: Tensor, Wh: Tensor, packing: _Packing
) -> Tensor:
    """grad_a (P, 4H): the gradient w.r.t. every packed gate pre-activation, by BPTT."""
    H = Wh.shape[0]
    # The coefficients of every step at once; the loop turns them into grad_a in place
    # (see _lstm_backward_coefficients): [i, f, g] scale by grad_c, o by grad_h.
    grad_a, c_from_h = _lstm_backward_coefficients(gates, packing.previous_states(cells), tanh_cells)
    per_step = (grad_a, *_gate_blocks(grad_a), grad_out, c_from_h, gates[:, H : 2 * H])
    grads, grads_i, grads_f, grads_o, grads_g, grad_outs, c_from_hs, forgets = map(packing.steps, per_step)
    # Gradient into c_{t+1} from step t + 1. Going backwards the batch only grows, so the
    # rows of sequences that had finished by then are still the zeros they started as.
    carry = grad_out.new_zeros(packing.N, H)
    times_Wh_T = _times(Wh.T)
    grad_h = grad_outs[-1] if grad_outs else None
    for t in range(len(grads) - 1, -1, -1):
        grad_c = carry[: grad_h.shape[0]].addcmul_(grad_h, c_from_hs[t])  # total gradient into c_{t+1}
        grads_i[t].mul_(grad_c)
        grads_f[t].mul_(grad_c)
        grads_o[t].mul_(grad_h)
        grads_g[t].mul_(grad_c)
        if t > 0:
            grad_c.mul_(forgets[t])  # now the carry into c_t
            grad_h = _into_previous(times_Wh_T(grads[t]), grad_outs[t - 1])
    return grad_a


def _sum_rows(grad_a: Tensor, rows: Tensor, table_size: int) -> Tensor:
    """(table_size, gH): row k is the sum of the rows of grad_a (P, gH) whose ``rows`` entry is k.

    A table row such as ``<START>``'s is read by thousands of steps. In bf16/fp16 every
    addition would round (CUDA adds atomically in the tensor's dtype), so half-precision
    gradients are summed in float32 and rounded once.
    """
    dtype = torch.float32 if grad_a.dtype in _HALF_DTYPES else grad_a.dtype
    total = torch.zeros(table_size, grad_a.shape[1], dtype=dtype, device=grad_a.device)
    return total.index_add_(0, rows, grad_a.to(dtype)).to(grad_a.dtype)


def _own_copy(packed: Tensor, source: Tensor) -> Tensor:
    """``packed`` if it is already a new tensor, else a copy (the LSTM activates it in place)."""
    shares = packed.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    return packed.clone() if shares else packed


@dataclass(frozen=True)
class _TimeLoops:
    """A cell's two time loops, which is all that differs between the recurrence Functions' cells.

    forward(pre_activations (P, gH), h0 (N, H), Wh, packing) -> (states (N + P, H), saved):
        ``saved`` is a tuple of the extra tensors backward needs.
    backward(grad_out (P, H), states, saved, Wh, packing) -> grad_a (P, gH), the gradient
        w.r.t. every packed pre-activation.
    activates_in_place: forward overwrites pre_activations, so it must never be the caller's tensor.
    """

    forward: Callable[..., tuple[Tensor, tuple[Tensor, ...]]]
    backward: Callable[..., Tensor]
    activates_in_place: bool


RNN_LOOPS = _TimeLoops(
    forward=lambda pre, h0, Wh, packing: (_rnn_forward_loop(pre, h0, Wh, packing), ()),
    backward=lambda grad_out, states, saved, Wh, packing: _rnn_backward_loop(grad_out, states, Wh, packing),
    activates_in_place=False,
)


def _lstm_forward(gates: Tensor, h0: Tensor, Wh: Tensor, packing: _Packing):
    states, cells, tanh_cells = _lstm_forward_loop(gates, h0, Wh, packing)
    return states, (gates, cells, tanh_cells)  # gates now hold the activations [i, f, o, g]


def _lstm_backward(grad_out: Tensor, states: Tensor, saved: tuple[Tensor, ...], Wh: Tensor, packing: _Packing):
    gates, cells, tanh_cells = saved
    return _lstm_backward_loop(grad_out, gates, cells, tanh_cells, Wh, packing)


LSTM_LOOPS = _TimeLoops(forward=_lstm_forward, backward=_lstm_backward, activates_in_place=True)


def _state_gradients(
    packing: _Packing, grad_a: Tensor, states: Tensor, Wh: Tensor, need_h0: bool, need_Wh: bool
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients that follow the time loop, for h0 and Wh: one GEMM each, only if needed."""
    grad_h0 = grad_Wh = None
    if need_h0:
        grad_h0 = states.new_zeros(packing.N, states.shape[1])
        if packing.run_sizes:  # else no step ran (T = 0 or every length 0) and h0 had no effect
            grad_h0[: packing.active[0]] = _mm(packing.steps(grad_a)[0], Wh.T)
    if need_Wh:
        grad_Wh = _mm(packing.previous_states(states).T, grad_a)
    return grad_h0, grad_Wh


class Recurrence(torch.autograd.Function):
    """A recurrent cell over whole sequences of projected inputs; backward runs backprop-through-time itself.

    ``forward(x_projected (N, T, gH), h0 (N, H), Wh (H, gH), lengths, loops) -> (N, T, H)``.
    ``lengths`` arrives on the host (a numpy array from :func:`_check_lengths`) or None;
    ``loops`` (:data:`RNN_LOOPS` or :data:`LSTM_LOOPS`) is the cell. What the loops save
    (the LSTM: gate activations (P, 4H), cell states (N + P, H) and their tanh (P, H)) is
    saved beside the hidden states, so that backward's loop does only what is sequential.
    """

    @staticmethod
    def forward(ctx, x_projected, h0, Wh, lengths, loops):
        N, T = x_projected.shape[:2]
        packing = _Packing(lengths, N, T, h0.device)
        pre_activations = packing.pack(_time_major(x_projected))  # (P, gH); the caller's tensor when nothing is skipped
        if loops.activates_in_place:
            pre_activations = _own_copy(pre_activations, x_projected)
        states, saved = loops.forward(pre_activations, h0, Wh, packing)
        ctx.save_for_backward(Wh, states, *saved)
        ctx.packing, ctx.loops = packing, loops
        return packing.unpack(states[N:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        Wh, states, *saved = ctx.saved_tensors
        packing: _Packing = ctx.packing
        grad_a = ctx.loops.backward(packing.pack(_time_major(grad_output)), states, saved, Wh, packing)
        need_x, need_h0, need_Wh = ctx.needs_input_grad[:3]
        grad_x = packing.unpack(grad_a) if need_x else None
        return grad_x, *_state_gradients(packing, grad_a, states, Wh, need_h0, need_Wh), None, None


class RecurrenceLookup(torch.autograd.Function):
    """:class:`Recurrence` whose step t of sequence n reads row index[n, t] of a table of projections.

    ``forward(index (N, T), table (U, gH), h0 (N, H), Wh (H, gH), lengths, loops) -> (N, T, H)``.
    The rows of the P steps that run are gathered once, straight into the packed layout
    (a new tensor, which the LSTM may activate in place); backward sums the gradient of
    every table row over the steps that read it.
    """

    @staticmethod
    def forward(ctx, index, table, h0, Wh, lengths, loops):
        N, T = index.shape
        packing = _Packing(lengths, N, T, h0.device)
        rows = packing.pack(index.T.reshape(-1))  # (P,) time-major, like every packed tensor
        states, saved = loops.forward(table.index_select(0, rows), h0, Wh, packing)
        ctx.save_for_backward(rows, Wh, states, *saved)
        ctx.packing, ctx.loops, ctx.table_size = packing, loops, table.shape[0]
        return packing.unpack(states[N:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        rows, Wh, states, *saved = ctx.saved_tensors
        packing: _Packing = ctx.packing
        grad_a = ctx.loops.backward(packing.pack(_time_major(grad_output)), states, saved, Wh, packing)
        # A row read k times gets the sum of k gradients.
        need_table, need_h0, need_Wh = ctx.needs_input_grad[1:4]
        grad_table = _sum_rows(grad_a, rows, ctx.table_size) if need_table else None
        grad_h0, grad_Wh = _state_gradients(packing, grad_a, states, Wh, need_h0, need_Wh)
        return None, grad_table, grad_h0, grad_Wh, None, None


def _check_lengths(lengths: Tensor | None, N: int, T: int) -> np.ndarray | None:
    """Check lengths and return them on the host, for the Function's packing (one device sync in all)."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {getattr(lengths, 'dtype', type(lengths))}")
    if lengths.shape != (N,):
        raise ValueError(f"lengths must have shape ({N},) (one per sequence), got {tuple(lengths.shape)}")
    values = lengths.cpu().numpy()  # one host sync for every check below
    if N and (values.min() < 0 or values.max() > T):
        raise ValueError(f"lengths must lie in [0, {T}] (the number of timesteps)")
    if N > 1 and (values[1:] > values[:-1]).any():
        raise ValueError("lengths must be sorted in non-increasing order (sort the batch by length)")
    return values


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
    return _recurrence(x_projected, h0, Wh, lengths, gates=1, loops=RNN_LOOPS)


def lstm(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor, lengths: Tensor | None = None) -> Tensor:
    """An LSTM run over a whole sequence, initial cell state zero: ``lstm_projected(temporal_affine(x, Wx, b), ...)``.

    Args:
        x: (N, T, D) input sequence.
        h0: (N, H) initial hidden state.
        Wx: (D, 4H), Wh: (H, 4H), b: (4H,) as in :func:`lstm_step`.
        lengths: optional (N,) non-increasing step counts, as :func:`rnn`.

    Returns:
        (N, T, H) hidden states of every timestep (a view, as :func:`rnn`'s).
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
    return _recurrence(x_projected, h0, Wh, lengths, gates=4, loops=LSTM_LOOPS)


def rnn_lookup(index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`rnn_projected` reading its inputs from a table: ``rnn_projected(table[index], h0, Wh, lengths)``.

    The padded (N, T, H) inputs ``table[index]`` are never built: the rows of the P steps
    that run are gathered once, straight into the packed layout, and backward sums the
    gradient of every row over the steps that read it. A model whose input projection
    depends on the word only (``W_embed[w] @ Wx + b``) projects each distinct word once
    and passes the words' rows here.

    Args:
        index: (N, T) integer rows of ``table``, each in [0, U).
        table: (U, H) input projections, one row per distinct input (e.g. word).
        h0: (N, H), Wh: (H, H), lengths: as :func:`rnn`.

    Returns:
        (N, T, H) hidden states.
    """
    return _recurrence_lookup(index, table, h0, Wh, lengths, gates=1, loops=RNN_LOOPS)


def lstm_lookup(index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`lstm_projected` reading its inputs from a table: ``lstm_projected(table[index], h0, Wh, lengths)``.

    As :func:`rnn_lookup`: no (N, T, 4H) input tensor, and one gradient row per table row.

    Args:
        index: (N, T) integer rows of ``table``, each in [0, U).
        table: (U, 4H) input projections, one row per distinct input (e.g. word).
        h0: (N, H), Wh: (H, 4H), lengths: as :func:`lstm`.

    Returns:
        (N, T, H) hidden states.
    """
    return _recurrence_lookup(index, table, h0, Wh, lengths, gates=4, loops=LSTM_LOOPS)


def _recurrence(x_projected: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None, gates: int, loops) -> Tensor:
    """Check the projected form's inputs, then run :class:`Recurrence` (under autocast, in its dtype)."""
    _check_projected(x_projected, h0, "h0", Wh, gates=gates, x_ndim=3)
    host_lengths = _check_lengths(lengths, x_projected.shape[0], x_projected.shape[1])
    return _apply_autocast(Recurrence, x_projected, h0, Wh, host_lengths, loops, low_precision=True)


def _recurrence_lookup(
    index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None, gates: int, loops
) -> Tensor:
    """Check the table form's inputs: index (N, T) rows of table (U, gH), h0 (N, H), Wh (H, gH); then run it."""
    _check_float("table", table, 2)
    _check_float("h0", h0, 2)
    _check_float("Wh", Wh, 2)
    _check_same_dtype(table=table, h0=h0, Wh=Wh)
    _check_token_ids("index", index, table.shape[0], ndim=2, unit="row number", within="the table")
    H = h0.shape[1]
    _check_dim("h0", h0, 0, index.shape[0], "the batch size of index")
    _check_dim("Wh", Wh, 0, H, "the hidden width")
    _check_dim("Wh", Wh, 1, gates * H, f"{gates} x the hidden width")
    _check_dim("table", table, 1, gates * H, f"{gates} x the hidden width")
    host_lengths = _check_lengths(lengths, index.shape[0], index.shape[1])
    return _apply_autocast(RecurrenceLookup, index, table, h0, Wh, host_lengths, loops, low_precision=True)
