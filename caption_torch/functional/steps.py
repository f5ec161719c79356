"""One timestep: the vanilla-RNN and LSTM cells, and the LSTM gate algebra the sequences reuse."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _apply_autocast,
    _check_cell,
    _check_projected,
    _check_recurrent,
    _mm,
    _tanh,
)
from caption_torch.functional.words import temporal_affine

# --------------------------------------------------------------------------- #
# Vanilla RNN
# --------------------------------------------------------------------------- #


# ATen's fused derivative kernels, one pass each instead of three elementwise ops:
#   sigmoid_backward(g, s) = g * s * (1 - s)      (s = sigmoid(a), so this is g * sigmoid'(a))
#   tanh_backward(g, t)    = g * (1 - t * t)      (t = tanh(a))
_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


class RNNStep(torch.autograd.Function):
    """One vanilla-RNN timestep on a projected input: ``next_h = tanh(x_projected + prev_h @ Wh)``.

    ``forward(x_projected (N, H), prev_h (N, H), Wh (H, H)) -> (N, H)``; :func:`rnn_step`
    composes it with the input projection ``x @ Wx + b``.
    """

    @staticmethod
    def forward(x_projected: Tensor, prev_h: Tensor, Wh: Tensor) -> Tensor:
        pre_activations = _mm(prev_h, Wh).add_(x_projected)
        return _tanh(pre_activations, out=pre_activations)  # (N, H)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        _, prev_h, Wh = inputs
        ctx.save_for_backward(prev_h, Wh, output)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_next_h: Tensor):
        prev_h, Wh, next_h = ctx.saved_tensors
        need_x, need_h, need_Wh = ctx.needs_input_grad
        grad_a = _tanh_backward(grad_next_h, next_h)  # (N, H): the gradient w.r.t. x_projected too
        grad_prev_h = _mm(grad_a, Wh.T) if need_h else None
        grad_Wh = _mm(prev_h.T, grad_a) if need_Wh else None
        return grad_a if need_x else None, grad_prev_h, grad_Wh


def _project(x: Tensor, Wx: Tensor, b: Tensor) -> Tensor:
    """(N, D) inputs -> (N, gH) projections ``x @ Wx + b``, through :func:`temporal_affine`."""
    return temporal_affine(x[:, None], Wx, b)[:, 0]


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
    return rnn_step_projected(_project(x, Wx, b), prev_h, Wh)


# --------------------------------------------------------------------------- #
# LSTM
# --------------------------------------------------------------------------- #
# Gate layout as cs231n's LSTM notebook: a = x Wx + h Wh + b is split into four
# H-wide blocks [i | f | o | g]; i, f, o = sigmoid, g = tanh.
#   c' = f * c + i * g        h' = o * tanh(c')


def _gate_blocks(gates: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four (N, H) column blocks [i, f, o, g] of an (N, 4H) gate tensor, as views."""
    return gates.unflatten(1, (4, gates.shape[1] // 4)).unbind(1)


def _lstm_gates_(a: Tensor) -> Tensor:
    """Turn pre-activations (..., 4H) into gate activations [i, f, o, g] in place."""
    H = a.shape[-1] // 4
    a[..., : 3 * H].sigmoid_()
    _tanh(a[..., 3 * H :], out=a[..., 3 * H :])
    return a


def _lstm_backward_coefficients(gates: Tensor, prev_c: Tensor, tanh_next_c: Tensor) -> tuple[Tensor, Tensor]:
    """What turns the gradients w.r.t. (next_h, next_c) into gate gradients, for every row at once.

    With c' = f c + i g and h' = o tanh(c'), the total gradient into c' is
    ``grad_c = grad_c' + grad_h' * o (1 - tanh(c')^2)``, and the gradients w.r.t. the
    pre-activations [a_i, a_f, a_o, a_g] are ``[grad_c, grad_c, grad_h', grad_c] * coefficients``.

    Args:
        gates: (N, 4H) activations [i, f, o, g].
        prev_c: (N, H) cell state before the step.
        tanh_next_c: (N, H) tanh of the cell state after it (saved by the forward pass,
            which computes it anyway, so backward does not compute it again).

    Returns:
        ``(coefficients (N, 4H), c_from_h (N, H))`` where c_from_h = o (1 - tanh(c')^2).
        Computed for every timestep at once, outside the sequential loop.
    """
    i, f, o, g = _gate_blocks(gates)
    coefficients = torch.empty_like(gates)
    coef_i, coef_f, coef_o, coef_g = _gate_blocks(coefficients)
    _sigmoid_backward.grad_input(g, i, grad_input=coef_i)  # g * sigmoid'(a_i)
    _sigmoid_backward.grad_input(prev_c, f, grad_input=coef_f)  # c * sigmoid'(a_f)
    _sigmoid_backward.grad_input(tanh_next_c, o, grad_input=coef_o)  # tanh(c') sigmoid'(a_o)
    _tanh_backward.grad_input(i, g, grad_input=coef_g)  # i * tanh'(a_g)
    return coefficients, _tanh_backward(o, tanh_next_c)


def _lstm_gate_gradients_(coefficients: Tensor, grad_c: Tensor, grad_h: Tensor) -> Tensor:
    """In place: coefficients (N, 4H) become the pre-activation gradients (see above)."""
    i, f, o, g = _gate_blocks(coefficients)
    i.mul_(grad_c)
    f.mul_(grad_c)
    o.mul_(grad_h)
    g.mul_(grad_c)
    return coefficients


class LSTMStep(torch.autograd.Function):
    """One LSTM timestep on a projected input, returning ``(next_h, next_c)``.

    ``forward(x_projected (N, 4H), prev_h (N, H), prev_c (N, H), Wh (H, 4H))``;
    :func:`lstm_step` composes it with the input projection ``x @ Wx + b``.
    """

    @staticmethod
    def forward(ctx, x_projected, prev_h, prev_c, Wh):
        gates = _lstm_gates_(_mm(prev_h, Wh).add_(x_projected))  # (N, 4H) = [i, f, o, g]
        H = prev_h.shape[1]
        next_c = torch.addcmul(gates[:, :H] * gates[:, 3 * H :], gates[:, H : 2 * H], prev_c)
        tanh_next_c = _tanh(next_c)
        next_h = gates[:, 2 * H : 3 * H] * tanh_next_c
        ctx.save_for_backward(prev_h, prev_c, Wh, gates, tanh_next_c)
        return next_h, next_c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_next_h, grad_next_c):
        prev_h, prev_c, Wh, gates, tanh_next_c = ctx.saved_tensors
        need_x, need_h, need_c, need_Wh = ctx.needs_input_grad
        H = prev_c.shape[1]
        coefficients, c_from_h = _lstm_backward_coefficients(gates, prev_c, tanh_next_c)
        grad_c = torch.addcmul(grad_next_c, grad_next_h, c_from_h)  # total gradient into next_c
        grad_a = _lstm_gate_gradients_(coefficients, grad_c, grad_next_h)  # (N, 4H)
        return (
            grad_a if need_x else None,
            _mm(grad_a, Wh.T) if need_h else None,
            grad_c * gates[:, H : 2 * H] if need_c else None,
            _mm(prev_h.T, grad_a) if need_Wh else None,
        )


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
    _check_cell(prev_c, prev_h)
    return lstm_step_projected(_project(x, Wx, b), prev_h, prev_c, Wh)


def rnn_step_projected(x_projected: Tensor, prev_h: Tensor, Wh: Tensor) -> Tensor:
    """:func:`rnn_step` for an input already projected: ``rnn_step_projected(x @ Wx + b, prev_h, Wh)``.

    Args:
        x_projected: (N, H) input projection (e.g. rows of a per-word table, as generation uses).
        prev_h: (N, H), Wh: (H, H) as :func:`rnn_step`.

    Returns:
        (N, H) next hidden state.
    """
    _check_projected(x_projected, prev_h, "prev_h", Wh, gates=1, x_ndim=2)
    return _apply_autocast(RNNStep, x_projected, prev_h, Wh, low_precision=True)


def lstm_step_projected(x_projected: Tensor, prev_h: Tensor, prev_c: Tensor, Wh: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`lstm_step` for an input already projected: ``lstm_step_projected(x @ Wx + b, h, c, Wh)``.

    Args:
        x_projected: (N, 4H) input projection.
        prev_h, prev_c: (N, H), Wh: (H, 4H) as :func:`lstm_step`.

    Returns:
        ``(next_h, next_c)``, each (N, H).
    """
    _check_projected(x_projected, prev_h, "prev_h", Wh, gates=4, x_ndim=2)
    _check_cell(prev_c, prev_h)
    return _apply_autocast(LSTMStep, x_projected, prev_h, prev_c, Wh, low_precision=True)
