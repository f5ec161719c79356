"""The math of the captioning model: one ``torch.autograd.Function`` per layer.

Every Function computes its forward pass with plain tensor ops and its backward
pass by hand (no autograd inside ``backward``); ``tests/test_functional.py``
proves each one with ``torch.autograd.gradcheck``. Argument order and weight
layouts follow cs231n's ``rnn_layers.py``: weight matrices are ``(in, out)``, so a
layer computes ``x @ W + b``.

Shapes use these letters throughout:

    N  batch size                 T  timesteps
    D  input width                H  hidden width
    V  vocabulary size            K  number of unmasked (scored) tokens

The sequence Functions (``rnn``, ``lstm``) run the whole sequence in one Function
so that backward can do backprop-through-time itself: the input projections of
all timesteps are one GEMM before the time loop, and the weight and input
gradients are one GEMM each after it; only the recurrent ``h @ Wh`` stays inside
the Python loop over T.

Every lowercase wrapper validates its inputs (clear ``ValueError`` naming the
argument) and then calls ``Function.apply``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "rnn_step",
    "rnn",
    "lstm_step",
    "lstm",
    "word_embedding",
    "temporal_affine",
    "temporal_softmax_loss",
    "vocab_softmax_loss",
]


# --------------------------------------------------------------------------- #
# Input validation shared by the wrappers
# --------------------------------------------------------------------------- #


def _check_float(name: str, tensor: Tensor, ndim: int) -> None:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")


def _check_same_dtype(**tensors: Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name}={dtype}" for name, dtype in dtypes.items())
        raise ValueError(f"all floating-point inputs must share one dtype, got {listed}")


def _check_dim(name: str, tensor: Tensor, dim: int, expected: int, meaning: str) -> None:
    if tensor.shape[dim] != expected:
        raise ValueError(
            f"{name} has size {tensor.shape[dim]} in dimension {dim} but {meaning} is {expected} "
            f"(shape {tuple(tensor.shape)})"
        )


def _check_token_ids(name: str, ids: Tensor, vocab_size: int, ndim: int) -> None:
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        dtype = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be an integer tensor of token ids, got {dtype}")
    if ids.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(ids.shape)}")
    if ids.numel() > 0:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} contains token id {bad}, outside the vocabulary [0, {vocab_size})")


def _check_recurrent(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor, gates: int, x_ndim: int) -> None:
    """Shared shape checks for the four recurrent wrappers (gates = 1 for RNN, 4 for LSTM)."""
    _check_float("x", x, x_ndim)
    _check_float("prev_h" if x_ndim == 2 else "h0", h0, 2)
    _check_float("Wx", Wx, 2)
    _check_float("Wh", Wh, 2)
    _check_float("b", b, 1)
    _check_same_dtype(x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    hidden = h0.shape[1]
    _check_dim("h0", h0, 0, x.shape[0], "the batch size of x")
    _check_dim("Wx", Wx, 0, x.shape[-1], "the input width of x")
    _check_dim("Wx", Wx, 1, gates * hidden, f"{gates} x the hidden width")
    _check_dim("Wh", Wh, 0, hidden, "the hidden width")
    _check_dim("Wh", Wh, 1, gates * hidden, f"{gates} x the hidden width")
    _check_dim("b", b, 0, gates * hidden, f"{gates} x the hidden width")


# --------------------------------------------------------------------------- #
# Vanilla RNN
# --------------------------------------------------------------------------- #


def _tanh_backward(grad_out: Tensor, tanh_out: Tensor) -> Tensor:
    """d tanh(a) / da expressed through the output: grad * (1 - tanh(a)^2)."""
    return grad_out * (1 - tanh_out * tanh_out)


class RNNStep(torch.autograd.Function):
    """One vanilla-RNN timestep: ``next_h = tanh(x @ Wx + prev_h @ Wh + b)``."""

    @staticmethod
    def forward(x: Tensor, prev_h: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor) -> Tensor:
        return torch.tanh(torch.addmm(torch.addmm(b, x, Wx), prev_h, Wh))  # (N, H)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, prev_h, Wx, Wh, _ = inputs
        ctx.save_for_backward(x, prev_h, Wx, Wh, output)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_next_h: Tensor):
        x, prev_h, Wx, Wh, next_h = ctx.saved_tensors
        need_x, need_h, need_Wx, need_Wh, need_b = ctx.needs_input_grad
        grad_a = _tanh_backward(grad_next_h, next_h)  # (N, H)
        grad_x = grad_a @ Wx.T if need_x else None
        grad_prev_h = grad_a @ Wh.T if need_h else None
        grad_Wx = x.T @ grad_a if need_Wx else None
        grad_Wh = prev_h.T @ grad_a if need_Wh else None
        grad_b = grad_a.sum(0) if need_b else None
        return grad_x, grad_prev_h, grad_Wx, grad_Wh, grad_b


class RNN(torch.autograd.Function):
    """A vanilla RNN over a whole sequence, with backprop-through-time in backward.

    Layout (batch-major, as cs231n)::

        x      (N, T, D) ──one GEMM──► x_proj (N, T, H)
        h0     (N, H)    ──loop over t: h_t = tanh(x_proj[:, t] + h_{t-1} @ Wh)
        output (N, T, H)  = [h_1, ..., h_T]
    """

    @staticmethod
    def forward(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor) -> Tensor:
        N, T, D = x.shape
        H = h0.shape[1]
        # All input projections at once; the loop below adds only the recurrent term.
        hidden_states = torch.addmm(b, x.reshape(N * T, D), Wx).view(N, T, H)
        h = h0
        for t in range(T):
            step = hidden_states[:, t]  # (N, H) view into the output buffer
            step.addmm_(h, Wh).tanh_()
            h = step
        return hidden_states

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, h0, Wx, Wh, _ = inputs
        ctx.save_for_backward(x, h0, Wx, Wh, output)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_hidden_states: Tensor):
        x, h0, Wx, Wh, hidden_states = ctx.saved_tensors
        need_x, need_h0, need_Wx, need_Wh, need_b = ctx.needs_input_grad
        N, T, D = x.shape
        H = h0.shape[1]
        # grad_a[:, t] is the gradient w.r.t. the pre-activation of step t.
        grad_a = torch.empty_like(hidden_states)  # (N, T, H)
        grad_h = grad_hidden_states[:, T - 1]
        for t in range(T - 1, -1, -1):
            step = grad_a[:, t]
            torch.mul(grad_h, 1 - hidden_states[:, t].square(), out=step)
            if t > 0:
                # Gradient into h_{t-1}: from step t through Wh, plus the loss at t-1.
                grad_h = torch.addmm(grad_hidden_states[:, t - 1], step, Wh.T)
        grad_h0 = grad_a[:, 0] @ Wh.T if need_h0 else None

        grad_a_flat = grad_a.view(N * T, H)
        grad_x = (grad_a_flat @ Wx.T).view(N, T, D) if need_x else None
        grad_Wx = x.reshape(N * T, D).T @ grad_a_flat if need_Wx else None
        grad_Wh = None
        if need_Wh:
            # h_{t-1} for every t: h0 followed by the first T-1 outputs.
            grad_Wh = h0.T @ grad_a[:, 0]
            if T > 1:
                previous = hidden_states[:, :-1].reshape(N * (T - 1), H)
                grad_Wh.addmm_(previous.T, grad_a[:, 1:].reshape(N * (T - 1), H))
        grad_b = grad_a_flat.sum(0) if need_b else None
        return grad_x, grad_h0, grad_Wx, grad_Wh, grad_b


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
    return RNNStep.apply(x, prev_h, Wx, Wh, b)


def rnn(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor) -> Tensor:
    """A vanilla RNN run over a whole sequence.

    Args:
        x: (N, T, D) input sequence.
        h0: (N, H) initial hidden state.
        Wx: (D, H), Wh: (H, H), b: (H,) as in :func:`rnn_step`.

    Returns:
        (N, T, H) hidden states of every timestep (h0 not included).
    """
    _check_recurrent(x, h0, Wx, Wh, b, gates=1, x_ndim=3)
    return RNN.apply(x, h0, Wx, Wh, b)


# --------------------------------------------------------------------------- #
# LSTM
# --------------------------------------------------------------------------- #
# Gate layout as cs231n's LSTM notebook: a = x Wx + h Wh + b is split into four
# H-wide blocks [i | f | o | g]; i, f, o = sigmoid, g = tanh.
#   c' = f * c + i * g        h' = o * tanh(c')


def _lstm_gates_(a: Tensor) -> Tensor:
    """Turn pre-activations (N, 4H) into gate activations [i, f, o, g] in place."""
    H = a.shape[1] // 4
    a[:, : 3 * H].sigmoid_()
    a[:, 3 * H :].tanh_()
    return a


def _lstm_step_backward(
    grad_h: Tensor, grad_c: Tensor, gates: Tensor, prev_c: Tensor, next_c: Tensor, grad_a: Tensor
) -> Tensor:
    """Backward through one LSTM cell, excluding the matrix products.

    Args:
        grad_h: (N, H) gradient w.r.t. next_h.
        grad_c: (N, H) gradient w.r.t. next_c arriving from the following step.
        gates: (N, 4H) activations [i, f, o, g].
        prev_c, next_c: (N, H) cell states before and after the step.
        grad_a: (N, 4H) buffer that receives the gradient w.r.t. the pre-activations.

    Returns:
        (N, H) gradient w.r.t. prev_c.
    """
    H = prev_c.shape[1]
    i, f, o, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    tanh_c = torch.tanh(next_c)
    grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c)  # total gradient into next_c
    # sigmoid'(a) = s (1 - s); tanh'(a) = 1 - t^2
    torch.mul(grad_c * g, i * (1 - i), out=grad_a[:, :H])
    torch.mul(grad_c * prev_c, f * (1 - f), out=grad_a[:, H : 2 * H])
    torch.mul(grad_h * tanh_c, o * (1 - o), out=grad_a[:, 2 * H : 3 * H])
    torch.mul(grad_c * i, 1 - g * g, out=grad_a[:, 3 * H :])
    return grad_c * f


class LSTMStep(torch.autograd.Function):
    """One LSTM timestep returning ``(next_h, next_c)``."""

    @staticmethod
    def forward(ctx, x, prev_h, prev_c, Wx, Wh, b):
        gates = _lstm_gates_(torch.addmm(torch.addmm(b, x, Wx), prev_h, Wh))  # (N, 4H)
        H = prev_h.shape[1]
        next_c = gates[:, H : 2 * H] * prev_c + gates[:, :H] * gates[:, 3 * H :]
        next_h = gates[:, 2 * H : 3 * H] * torch.tanh(next_c)
        ctx.save_for_backward(x, prev_h, prev_c, Wx, Wh, gates, next_c)
        return next_h, next_c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_next_h, grad_next_c):
        x, prev_h, prev_c, Wx, Wh, gates, next_c = ctx.saved_tensors
        need_x, need_h, need_c, need_Wx, need_Wh, need_b = ctx.needs_input_grad
        # An output that did not reach the loss arrives as None or zeros.
        if grad_next_h is None:
            grad_next_h = torch.zeros_like(next_c)
        if grad_next_c is None:
            grad_next_c = torch.zeros_like(next_c)
        grad_a = torch.empty_like(gates)
        grad_prev_c = _lstm_step_backward(grad_next_h, grad_next_c, gates, prev_c, next_c, grad_a)
        return (
            grad_a @ Wx.T if need_x else None,
            grad_a @ Wh.T if need_h else None,
            grad_prev_c if need_c else None,
            x.T @ grad_a if need_Wx else None,
            prev_h.T @ grad_a if need_Wh else None,
            grad_a.sum(0) if need_b else None,
        )


class LSTM(torch.autograd.Function):
    """An LSTM over a whole sequence (initial cell state zero), BPTT in backward.

    Saved for backward: gate activations (N, T, 4H), cell states (N, T, H) and
    the output hidden states (N, T, H).
    """

    @staticmethod
    def forward(ctx, x, h0, Wx, Wh, b):
        N, T, D = x.shape
        H = h0.shape[1]
        gates = torch.addmm(b, x.reshape(N * T, D), Wx).view(N, T, 4 * H)
        cells = x.new_empty(N, T, H)
        hidden_states = x.new_empty(N, T, H)
        h, c = h0, torch.zeros_like(h0)
        for t in range(T):
            step = gates[:, t]  # (N, 4H) view
            _lstm_gates_(step.addmm_(h, Wh))
            c = torch.addcmul(step[:, 3 * H :] * step[:, :H], step[:, H : 2 * H], c, out=cells[:, t])
            h = torch.mul(step[:, 2 * H : 3 * H], torch.tanh(c), out=hidden_states[:, t])
        ctx.save_for_backward(x, h0, Wx, Wh, gates, cells, hidden_states)
        return hidden_states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hidden_states):
        x, h0, Wx, Wh, gates, cells, hidden_states = ctx.saved_tensors
        need_x, need_h0, need_Wx, need_Wh, need_b = ctx.needs_input_grad
        N, T, D = x.shape
        H = h0.shape[1]
        grad_a = torch.empty_like(gates)  # (N, T, 4H)
        zeros = torch.zeros_like(h0)
        grad_h, grad_c = grad_hidden_states[:, T - 1], zeros
        for t in range(T - 1, -1, -1):
            prev_c = cells[:, t - 1] if t > 0 else zeros
            grad_c = _lstm_step_backward(grad_h, grad_c, gates[:, t], prev_c, cells[:, t], grad_a[:, t])
            if t > 0:
                grad_h = torch.addmm(grad_hidden_states[:, t - 1], grad_a[:, t], Wh.T)
        grad_h0 = grad_a[:, 0] @ Wh.T if need_h0 else None

        grad_a_flat = grad_a.view(N * T, 4 * H)
        grad_x = (grad_a_flat @ Wx.T).view(N, T, D) if need_x else None
        grad_Wx = x.reshape(N * T, D).T @ grad_a_flat if need_Wx else None
        grad_Wh = None
        if need_Wh:
            grad_Wh = h0.T @ grad_a[:, 0]
            if T > 1:
                previous = hidden_states[:, :-1].reshape(N * (T - 1), H)
                grad_Wh.addmm_(previous.T, grad_a[:, 1:].reshape(N * (T - 1), 4 * H))
        grad_b = grad_a_flat.sum(0) if need_b else None
        return grad_x, grad_h0, grad_Wx, grad_Wh, grad_b


def lstm_step(
    x: Tensor, prev_h: Tensor, prev_c: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    """One LSTM step.

    Args:
        x: (N, D) inputs of this timestep.
        prev_h, prev_c: (N, H) previous hidden and cell states.
        Wx: (D, 4H), Wh: (H, 4H), b: (4H,) weights for the gates [i, f, o, g].

    Returns:
        ``(next_h, next_c)``, each (N, H).
    """
    _check_recurrent(x, prev_h, Wx, Wh, b, gates=4, x_ndim=2)
    _check_float("prev_c", prev_c, 2)
    _check_same_dtype(prev_h=prev_h, prev_c=prev_c)
    if prev_c.shape != prev_h.shape:
        raise ValueError(f"prev_c has shape {tuple(prev_c.shape)} but prev_h has {tuple(prev_h.shape)}")
    return LSTMStep.apply(x, prev_h, prev_c, Wx, Wh, b)


def lstm(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor) -> Tensor:
    """An LSTM run over a whole sequence; the initial cell state is zero.

    Args:
        x: (N, T, D) input sequence.
        h0: (N, H) initial hidden state.
        Wx: (D, 4H), Wh: (H, 4H), b: (4H,) as in :func:`lstm_step`.

    Returns:
        (N, T, H) hidden states of every timestep.
    """
    _check_recurrent(x, h0, Wx, Wh, b, gates=4, x_ndim=3)
    return LSTM.apply(x, h0, Wx, Wh, b)


# --------------------------------------------------------------------------- #
# Word embedding
# --------------------------------------------------------------------------- #


class WordEmbedding(torch.autograd.Function):
    """Look up the row of W for every token id: ``out[n, t] = W[x[n, t]]``."""

    @staticmethod
    def forward(x: Tensor, W: Tensor) -> Tensor:
        return W.index_select(0, x.reshape(-1)).view(*x.shape, W.shape[1])

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, W = inputs
        ctx.save_for_backward(x)
        ctx.vocab_size = W.shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None
        D = grad_out.shape[-1]
        grad_W = grad_out.new_zeros(ctx.vocab_size, D)
        # index_add_ accumulates: a word used several times gets the sum of its gradients.
        grad_W.index_add_(0, x.reshape(-1), grad_out.reshape(-1, D))
        return None, grad_W


def word_embedding(x: Tensor, W: Tensor) -> Tensor:
    """Embed token ids.

    Args:
        x: (N, T) integer token ids, each in [0, V).
        W: (V, D) embedding matrix.

    Returns:
        (N, T, D) word vectors.
    """
    _check_float("W", W, 2)
    _check_token_ids("x", x, W.shape[0], ndim=2)
    return WordEmbedding.apply(x, W)


# --------------------------------------------------------------------------- #
# Vocabulary projection and loss
# --------------------------------------------------------------------------- #


class TemporalAffine(torch.autograd.Function):
    """``out[n, t] = x[n, t] @ w + b`` as one GEMM over all N*T rows."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        N, T, D = x.shape
        return torch.addmm(b, x.reshape(N * T, D), w).view(N, T, w.shape[1])

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, w, _ = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        x, w = ctx.saved_tensors
        N, T, D = x.shape
        grad_flat = grad_out.reshape(N * T, w.shape[1])
        grad_x = (grad_flat @ w.T).view(N, T, D) if ctx.needs_input_grad[0] else None
        grad_w = x.reshape(N * T, D).T @ grad_flat if ctx.needs_input_grad[1] else None
        grad_b = grad_flat.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def temporal_affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Apply one affine map at every timestep.

    Args:
        x: (N, T, D) inputs.
        w: (D, M) weights.
        b: (M,) bias.

    Returns:
        (N, T, M) outputs.
    """
    _check_float("x", x, 3)
    _check_float("w", w, 2)
    _check_float("b", b, 1)
    _check_same_dtype(x=x, w=w, b=b)
    _check_dim("w", w, 0, x.shape[2], "the input width of x")
    _check_dim("b", b, 0, w.shape[1], "the output width of w")
    return TemporalAffine.apply(x, w, b)


def _log_softmax_(scores: Tensor) -> Tensor:
    """Row-wise log-softmax of (K, V) scores, computed in place and returned."""
    # Subtracting the row max keeps exp() finite for scores in the thousands.
    scores.sub_(scores.amax(dim=1, keepdim=True))
    return scores.sub_(scores.exp().sum(dim=1, keepdim=True).log_())


def _softmax_loss_grad(probs: Tensor, targets: Tensor, scale: Tensor) -> Tensor:
    """Gradient of ``scale * NLL`` w.r.t. the scores: ``(probs - onehot(targets)) * scale``.

    Args:
        probs: (K, V) softmax probabilities (left untouched: backward may run twice).
        targets: (K,) correct token ids.
        scale: scalar, or (K, 1) per-row weights.
    """
    grad = probs * scale
    rows = torch.arange(probs.shape[0], device=probs.device)
    row_scale = scale.reshape(-1) if scale.dim() > 0 else scale
    grad[rows, targets] -= row_scale
    return grad


class TemporalSoftmaxLoss(torch.autograd.Function):
    """Masked softmax cross-entropy summed over timesteps and divided by N."""

    @staticmethod
    def forward(ctx, x, y, mask):
        N, T, V = x.shape
        keep = mask.reshape(N * T, 1).to(x.dtype)
        targets = y.reshape(N * T)
        log_probs = _log_softmax_(x.reshape(N * T, V).clone())
        loss = -(log_probs.gather(1, targets[:, None]) * keep).sum() / N
        ctx.save_for_backward(log_probs.exp_(), targets, keep)  # probs, (N*T, V)
        ctx.batch_size = N
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        probs, targets, keep = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        N = ctx.batch_size
        grad = _softmax_loss_grad(probs, targets, keep * (grad_loss / N))
        return grad.view(N, -1, probs.shape[1]), None, None


class VocabSoftmaxLoss(torch.autograd.Function):
    """``temporal_affine`` followed by ``temporal_softmax_loss``, fused.

    Only the K unmasked positions are scored: padding after ``<END>`` never reaches
    the (N*T, H) @ (H, V) product, which is the largest GEMM of the model. Saves
    the (K, H) scored hidden states and the (K, V) probabilities.
    """

    @staticmethod
    def forward(ctx, hidden, W_vocab, b_vocab, y, mask):
        N, T, H = hidden.shape
        rows = mask.reshape(N * T).nonzero().squeeze(1)  # (K,)
        scored = hidden.reshape(N * T, H).index_select(0, rows)  # (K, H)
        targets = y.reshape(N * T).index_select(0, rows)  # (K,)
        log_probs = _log_softmax_(torch.addmm(b_vocab, scored, W_vocab))  # (K, V)
        loss = -log_probs.gather(1, targets[:, None]).sum() / N
        ctx.save_for_backward(scored, W_vocab, rows, targets, log_probs.exp_())
        ctx.hidden_shape = (N, T, H)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        scored, W_vocab, rows, targets, probs = ctx.saved_tensors
        need_hidden, need_W, need_b = ctx.needs_input_grad[:3]
        N, T, H = ctx.hidden_shape
        grad_scores = _softmax_loss_grad(probs, targets, grad_loss / N)  # (K, V)
        grad_hidden = None
        if need_hidden:
            grad_hidden = scored.new_zeros(N * T, H)
            grad_hidden.index_copy_(0, rows, grad_scores @ W_vocab.T)
            grad_hidden = grad_hidden.view(N, T, H)
        grad_W = scored.T @ grad_scores if need_W else None
        grad_b = grad_scores.sum(0) if need_b else None
        return grad_hidden, grad_W, grad_b, None, None


def _check_targets(y: Tensor, mask: Tensor, batch_shape: tuple, vocab_size: int) -> None:
    """Targets y and mask must both be (N, T); y must hold ids in [0, V)."""
    _check_token_ids("y", y, vocab_size, ndim=2)
    if tuple(y.shape) != tuple(batch_shape):
        raise ValueError(f"y has shape {tuple(y.shape)} but the scores have (N, T) = {tuple(batch_shape)}")
    if not isinstance(mask, Tensor) or mask.shape != y.shape:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of shape {tuple(y.shape)} like y, got {shape}")


def temporal_softmax_loss(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Masked softmax loss over a sequence, as cs231n's ``temporal_softmax_loss``.

    Args:
        x: (N, T, V) scores.
        y: (N, T) correct token ids in [0, V).
        mask: (N, T) bool (or 0/1): which positions count.

    Returns:
        Scalar loss: the masked cross-entropy summed over all timesteps and divided
        by N (not by the number of unmasked tokens).
    """
    _check_float("x", x, 3)
    _check_targets(y, mask, x.shape[:2], x.shape[2])
    return TemporalSoftmaxLoss.apply(x, y, mask)


def vocab_softmax_loss(hidden: Tensor, W_vocab: Tensor, b_vocab: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``temporal_softmax_loss(temporal_affine(hidden, W_vocab, b_vocab), y, mask)`` in one Function.

    Equal to the two-Function composition (tested), but the scores of masked
    positions are never computed and no (N, T, V) tensor is materialised.

    Args:
        hidden: (N, T, H) hidden states.
        W_vocab: (H, V) vocabulary projection.
        b_vocab: (V,) its bias.
        y: (N, T) correct token ids in [0, V).
        mask: (N, T) bool (or 0/1): which positions count.

    Returns:
        Scalar loss, summed over timesteps and divided by N.
    """
    _check_float("hidden", hidden, 3)
    _check_float("W_vocab", W_vocab, 2)
    _check_float("b_vocab", b_vocab, 1)
    _check_same_dtype(hidden=hidden, W_vocab=W_vocab, b_vocab=b_vocab)
    _check_dim("W_vocab", W_vocab, 0, hidden.shape[2], "the hidden width")
    _check_dim("b_vocab", b_vocab, 0, W_vocab.shape[1], "the vocabulary size of W_vocab")
    _check_targets(y, mask, hidden.shape[:2], W_vocab.shape[1])
    return VocabSoftmaxLoss.apply(hidden, W_vocab, b_vocab, y, mask)
