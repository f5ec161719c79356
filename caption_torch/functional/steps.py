"""One timestep of any cell (``cells/``): the Function that generation runs once per word."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _apply_autocast,
    _check_float,
    _check_projected,
    _check_same_dtype,
    _mm,
)

if TYPE_CHECKING:
    from caption_torch.functional.cells.base import Cell, State


class CellStep(torch.autograd.Function):
    """One timestep of ``cell`` on a projected input: ``state' = cell(x_projected, state @ Wh)``.

    ``forward(x_projected (N, gH), Wh (H, gH), cell, *state) -> (*state', for_backward)``, each
    state tensor (N, H). ``for_backward`` (what the cell saves, e.g. the LSTM's gate
    activations) is returned beside the state so that :meth:`setup_context` can save it;
    :func:`cell_step` drops it.
    """

    @staticmethod
    def forward(x_projected: Tensor, Wh: Tensor, cell: Cell, *state: Tensor):
        hidden = _mm(state[0], Wh)  # (N, gH)
        rows, saved = cell.forward_rows(x_projected, a_is_scratch=False)
        after = tuple(torch.empty_like(s) for s in state)
        cell.forward_step(hidden, state, after, *rows)
        return (*after, saved)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        _, Wh, cell, *before = inputs
        *after, saved = output
        ctx.save_for_backward(Wh, *before, *after, *saved)
        ctx.cell = cell
        ctx.set_materialize_grads(False)  # the zero gradients of unused outputs are made below, only if needed

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, *grads):
        cell: Cell = ctx.cell
        size = cell.state_size
        if all(g is None for g in grads[:size]):  # no gradient reached the state (see setup_context)
            return (None,) * (3 + size)
        Wh, *tensors = ctx.saved_tensors
        before, after, saved = tuple(tensors[:size]), tuple(tensors[size : 2 * size]), tuple(tensors[2 * size :])
        grad_after = [g if g is not None else torch.zeros_like(s) for g, s in zip(grads[:size], after)]
        grad_a, grad_hidden, rows = cell.backward_rows(saved, before, after)
        # The carries are the cell's to overwrite: never autograd's tensors.
        carries = tuple(g.clone() if g is grads[k + 1] else g for k, g in enumerate(grad_after[1:]))
        direct, carries = cell.backward_step(grad_after[0], carries, *rows)
        need_x, need_Wh, _, need_h, *need_rest = ctx.needs_input_grad
        grad_h = None
        if need_h:
            grad_h = _mm(grad_hidden, Wh.T)
            if direct is not None:
                grad_h.add_(direct)
        grad_rest = [c if need else None for c, need in zip(carries, need_rest)]
        grad_Wh = _mm(before[0].T, grad_hidden) if need_Wh else None
        return grad_a if need_x else None, grad_Wh, None, grad_h, *grad_rest


def cell_step(cell: Cell, x_projected: Tensor, state: State, Wh: Tensor) -> State:
    """One timestep of ``cell`` on an input already projected (``x @ Wx + b``).

    Args:
        cell: the cell (``functional.CELLS``).
        x_projected: (N, gH) input projection (e.g. rows of a per-word table, as generation uses).
        state: the cell's state before the step (``cell.state_names``), each (N, H).
        Wh: (H, gH) hidden-to-hidden weights.

    Returns:
        The state after the step, each (N, H).
    """
    if not isinstance(state, tuple) or len(state) != cell.state_size:
        names = ", ".join(cell.state_names)
        raise ValueError(f"the {cell.name} state must be a tuple of {cell.state_size} tensors ({names})")
    h = state[0]
    _check_projected(x_projected, h, "prev_h", Wh, gates=cell.gates, x_ndim=2)
    for name, tensor in zip(cell.state_names[1:], state[1:]):
        _check_float(f"prev_{name}", tensor, 2)
        _check_same_dtype(prev_h=h, **{f"prev_{name}": tensor})
        if tensor.shape != h.shape:
            raise ValueError(f"prev_{name} has shape {tuple(tensor.shape)} but prev_h has {tuple(h.shape)}")
    *after, _ = _apply_autocast(CellStep, x_projected, Wh, cell, *state, low_precision=True)
    return tuple(after)
