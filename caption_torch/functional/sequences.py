"""Whole sequences of any cell (``cells/``): one Function runs the time loop forward and backward."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _HALF_DTYPES,
    _apply_autocast,
    _check_dim,
    _check_float,
    _check_projected,
    _check_same_dtype,
    _mm,
    _times,
    _unless_unused,
)
from caption_torch.functional.checks import check_token_ids

if TYPE_CHECKING:
    from caption_torch.functional.cells.base import Cell

# --------------------------------------------------------------------------- #
# Sequences: one Function runs the whole time loop, forward and backward
# --------------------------------------------------------------------------- #
# Inside, rows are "packed" time-major: step 0's sequences, then step 1's, ... and a
# sequence that has finished (t >= lengths[n]; lengths sorted, non-increasing) is
# simply absent, so no product or elementwise op ever touches padding:
#
#     x_projected (N, T, gH) ─pack─► input sides a (P, gH)      P = sum(lengths)
#     (or, lookup: index (N, T) ─pack─► (P,) row numbers ─rows of the table─► the same)
#     states (N + P, H) = [h0 | h_1 of step 0's rows | h_2 of step 1's rows | ...], one
#         buffer per state tensor (an LSTM's c beside h)
#     step t reads h_t = rows of block t, first n_t of them (n_t = sequences still running),
#         multiplies h_t @ Wh and hands both sides to the cell, which writes h_{t+1}
#     output (N, T, H) ◄─unpack─ states[N:]  (zeros where finished; a transposed view)
#
# Without lengths every sequence runs all T steps; packing is then the identity and
# costs no copy. Backward runs the steps in reverse: the cell turns the gradient into
# h_{t+1} into gradients w.r.t. both sides; the loop multiplies the hidden side's by Wh.T
# (into h_t) and, after the loop, sums h_t.T @ it over every step for dWh: one GEMM.


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


def _forward_loop(cell: Cell, a: Tensor, a_is_scratch: bool, h0: Tensor, Wh: Tensor, packing: _Packing):
    """Run ``cell`` over packed input-side pre-activations ``a`` (P, gH), from h0 (the other state tensors zero).

    Returns:
        ``(states, saved)``: for each state tensor the (N + P, H) buffer [initial | after step 0's
        rows | ...], and what the cell saves for backward.
    """
    N, H = packing.N, h0.shape[1]
    states = tuple(a.new_empty(N + packing.total, H) for _ in range(cell.state_size))
    states[0][:N] = h0
    for other in states[1:]:
        other[:N] = 0
    rows, saved = cell.forward_rows(a, a_is_scratch)
    times_Wh = _times(Wh)
    befores = zip(*(packing.previous_steps(s) for s in states))
    afters = zip(*(packing.steps(s[N:]) for s in states))
    for before, after, step_rows in zip(befores, afters, zip(*map(packing.steps, rows))):
        cell.forward_step(times_Wh(before[0]), before, after, *step_rows)
    return states, saved


def _into_previous(through_recurrence: Tensor, from_loss: Tensor) -> Tensor:
    """Gradient into h_t: from step t (its n_t rows) plus the loss at h_t directly (n_{t-1} >= n_t rows)."""
    n = through_recurrence.shape[0]
    if from_loss.shape[0] == n:
        return through_recurrence.add_(from_loss)
    total = from_loss.clone()
    total[:n] += through_recurrence
    return total


def _grown(carry: Tensor, rows: int) -> Tensor:
    """``carry`` (n, H) with zero rows appended up to ``rows``: sequences whose last step is the next
    one back send no gradient into their final state."""
    if carry.shape[0] == rows:
        return carry
    return torch.cat([carry, carry.new_zeros(rows - carry.shape[0], carry.shape[1])])


def _backward_loop(cell: Cell, grad_out: Tensor, states: tuple[Tensor, ...], saved: tuple[Tensor, ...],
                   Wh: Tensor, packing: _Packing) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:  # fmt: skip
    """Backprop through time.

    Args:
        grad_out: (P, H) packed gradient w.r.t. the outputs (the hidden states).

    Returns:
        ``(grad_a, grad_hidden, direct, h_before)``: the gradients w.r.t. every packed input-side
        and hidden-side pre-activation (P, gH), the first step's gradient into h0 that bypasses
        Wh (or None), and the (P, H) hidden state before every step.
    """
    N = packing.N
    before = tuple(packing.previous_states(s) for s in states)
    grad_a, grad_hidden, rows = cell.backward_rows(saved, before, tuple(s[N:] for s in states))
    grad_outs, grad_hiddens = packing.steps(grad_out), packing.steps(grad_hidden)
    step_rows = list(zip(*map(packing.steps, rows)))
    times_Wh_T = _times(Wh.T)
    direct = None
    if grad_outs:
        grad_h = grad_outs[-1]
        carries = tuple(grad_out.new_zeros(grad_h.shape) for _ in range(cell.state_size - 1))
    for t in range(len(grad_outs) - 1, -1, -1):
        direct, carries = cell.backward_step(grad_h, carries, *step_rows[t])
        if t > 0:
            through = times_Wh_T(grad_hiddens[t])
            if direct is not None:
                through.add_(direct)
            grad_h = _into_previous(through, grad_outs[t - 1])
            carries = tuple(_grown(carry, grad_h.shape[0]) for carry in carries)
    return grad_a, grad_hidden, direct, before[0]


def _sum_rows(grad_a: Tensor, rows: Tensor, table_size: int) -> Tensor:
    """(table_size, gH): row k is the sum of the rows of grad_a (P, gH) whose ``rows`` entry is k.

    A table row such as ``<START>``'s is read by thousands of steps. In bf16/fp16 every
    addition would round (CUDA adds atomically in the tensor's dtype), so half-precision
    gradients are summed in float32 and rounded once.
    """
    dtype = torch.float32 if grad_a.dtype in _HALF_DTYPES else grad_a.dtype
    total = torch.zeros(table_size, grad_a.shape[1], dtype=dtype, device=grad_a.device)
    return total.index_add_(0, rows, grad_a.to(dtype)).to(grad_a.dtype)


def _hidden_gradients(
    packing: _Packing,
    grad_hidden: Tensor,
    direct: Tensor | None,
    h_before: Tensor,
    Wh: Tensor,
    need_h0: bool,
    need_Wh: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients that follow the time loop, for h0 and Wh: one GEMM each, only if needed."""
    grad_h0 = grad_Wh = None
    if need_h0:
        grad_h0 = h_before.new_zeros(packing.N, h_before.shape[1])
        if packing.run_sizes:  # else no step ran (T = 0 or every length 0) and h0 had no effect
            first = grad_h0[: packing.active[0]]
            first[...] = _mm(packing.steps(grad_hidden)[0], Wh.T)
            if direct is not None:
                first += direct
    if need_Wh:
        grad_Wh = _mm(h_before.T, grad_hidden)
    return grad_h0, grad_Wh


def _shares_memory(packed: Tensor, source: Tensor) -> bool:
    return packed.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()


# Both Functions return what backward needs beside their output, so that setup_context can
# save it: the state buffers and the cell's saved tensors exist only inside forward.


class Recurrence(torch.autograd.Function):
    """A recurrent cell over whole sequences of projected inputs; backward runs backprop-through-time itself.

    ``forward(x_projected (N, T, gH), h0 (N, H), Wh (H, gH), packing, cell) -> ((N, T, H), for_backward)``.
    ``packing`` (:class:`_Packing`) says which steps run; ``cell`` is a :class:`~caption_torch.functional.cells.Cell`.
    What the cell saves (the LSTM: gate activations (P, 4H) and tanh of the cell states (P, H))
    is saved beside the state buffers (N + P, H), so that backward's loop does only what is
    sequential. :func:`recurrence` returns the output alone.
    """

    @staticmethod
    def forward(x_projected: Tensor, h0: Tensor, Wh: Tensor, packing: _Packing, cell: Cell):
        a = packing.pack(_time_major(x_projected))  # (P, gH); the caller's tensor when nothing is skipped
        states, saved = _forward_loop(cell, a, not _shares_memory(a, x_projected), h0, Wh, packing)
        return packing.unpack(states[0][packing.N :]), (states, saved)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        _, _, Wh, packing, cell = inputs
        _, (states, saved) = output
        ctx.save_for_backward(Wh, *states, *saved)
        ctx.packing, ctx.cell = packing, cell
        ctx.set_materialize_grads(False)  # for_backward gets no gradient: never make zeros for it

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_output: Tensor, _):
        Wh, *tensors = ctx.saved_tensors
        packing: _Packing = ctx.packing
        size = ctx.cell.state_size
        grad_out = packing.pack(_time_major(grad_output))
        grad_a, grad_hidden, direct, h_before = _backward_loop(
            ctx.cell, grad_out, tuple(tensors[:size]), tuple(tensors[size:]), Wh, packing
        )
        need_x, need_h0, need_Wh = ctx.needs_input_grad[:3]
        grad_x = packing.unpack(grad_a) if need_x else None
        grad_h0, grad_Wh = _hidden_gradients(packing, grad_hidden, direct, h_before, Wh, need_h0, need_Wh)
        return grad_x, grad_h0, grad_Wh, None, None


class RecurrenceLookup(torch.autograd.Function):
    """:class:`Recurrence` whose step t of sequence n reads row index[n, t] of a table of projections.

    ``forward(index (N, T), table (U, gH), h0 (N, H), Wh (H, gH), packing, cell) -> ((N, T, H), for_backward)``.
    The rows of the P steps that run are gathered once, straight into the packed layout
    (a new tensor, which the cell may overwrite); backward sums the gradient of every
    table row over the steps that read it.
    """

    @staticmethod
    def forward(index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, packing: _Packing, cell: Cell):
        rows = packing.pack(index.T.reshape(-1))  # (P,) time-major, like every packed tensor
        states, saved = _forward_loop(cell, table.index_select(0, rows), True, h0, Wh, packing)
        return packing.unpack(states[0][packing.N :]), (rows, states, saved)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        _, table, _, Wh, packing, cell = inputs
        _, (rows, states, saved) = output
        ctx.save_for_backward(rows, Wh, *states, *saved)
        ctx.packing, ctx.cell, ctx.table_size = packing, cell, table.shape[0]
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_output: Tensor, _):
        rows, Wh, *tensors = ctx.saved_tensors
        packing: _Packing = ctx.packing
        size = ctx.cell.state_size
        grad_out = packing.pack(_time_major(grad_output))
        grad_a, grad_hidden, direct, h_before = _backward_loop(
            ctx.cell, grad_out, tuple(tensors[:size]), tuple(tensors[size:]), Wh, packing
        )
        # A row read k times gets the sum of k gradients.
        need_table, need_h0, need_Wh = ctx.needs_input_grad[1:4]
        grad_table = _sum_rows(grad_a, rows, ctx.table_size) if need_table else None
        grad_h0, grad_Wh = _hidden_gradients(packing, grad_hidden, direct, h_before, Wh, need_h0, need_Wh)
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


def recurrence(cell: Cell, x_projected: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """``cell`` over whole sequences of inputs already projected (``x @ Wx + b``).

    Args:
        cell: the cell (``functional.CELLS``).
        x_projected: (N, T, gH) input projections.
        h0: (N, H) initial hidden state; the cell's other state tensors start at zero.
        Wh: (H, gH) hidden-to-hidden weights.
        lengths: optional (N,) non-increasing integers in [0, T]: sequence n needs only its
            first lengths[n] steps; its later outputs are zero and get no gradient.

    Returns:
        (N, T, H) hidden states of every timestep (h0 not included): a time-major (transposed)
        view made inside the Function, which autograd refuses to change in place; change a copy.
    """
    _check_projected(x_projected, h0, "h0", Wh, gates=cell.gates, x_ndim=3)
    N, T = x_projected.shape[:2]
    packing = _Packing(_check_lengths(lengths, N, T), N, T, h0.device)
    output, _ = _apply_autocast(Recurrence, x_projected, h0, Wh, packing, cell, low_precision=True)
    return output


def recurrence_lookup(
    cell: Cell, index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None
) -> Tensor:
    """:func:`recurrence` reading its inputs from a table: ``recurrence(cell, table[index], h0, Wh, lengths)``.

    The padded (N, T, gH) inputs ``table[index]`` are never built: the rows of the P steps
    that run are gathered once, straight into the packed layout, and backward sums the
    gradient of every row over the steps that read it. A model whose input projection
    depends on the word only (``W_embed[w] @ Wx + b``) projects each distinct word once
    and passes the words' rows here.

    Args:
        cell: the cell (``functional.CELLS``).
        index: (N, T) integer rows of ``table``, each in [0, U).
        table: (U, gH) input projections, one row per distinct input (e.g. word).
        h0: (N, H), Wh: (H, gH), lengths: as :func:`recurrence`.

    Returns:
        (N, T, H) hidden states.
    """
    _check_float("table", table, 2)
    _check_float("h0", h0, 2)
    _check_float("Wh", Wh, 2)
    _check_same_dtype(table=table, h0=h0, Wh=Wh)
    check_token_ids("index", index, table.shape[0], ndim=2, unit="row number", within="the table")
    H, gates = h0.shape[1], cell.gates
    _check_dim("h0", h0, 0, index.shape[0], "the batch size of index")
    _check_dim("Wh", Wh, 0, H, "the hidden width")
    _check_dim("Wh", Wh, 1, gates * H, f"{gates} x the hidden width")
    _check_dim("table", table, 1, gates * H, f"{gates} x the hidden width")
    N, T = index.shape
    packing = _Packing(_check_lengths(lengths, N, T), N, T, h0.device)
    output, _ = _apply_autocast(RecurrenceLookup, index, table, h0, Wh, packing, cell, low_precision=True)
    return output
