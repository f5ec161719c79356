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

import os

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "rnn_step",
    "rnn",
    "rnn_projected",
    "lstm_step",
    "lstm",
    "lstm_projected",
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
    device = next(iter(tensors.values())).device.type
    if torch.is_autocast_enabled(device):
        return  # mixed dtypes are autocast's normal input; the wrappers cast them (see _apply_autocast)
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
# Mixed precision
# --------------------------------------------------------------------------- #
# Autocast does not look inside a custom Function, so the wrappers do its job: under
# autocast, the products (recurrences, affine maps) run in the autocast dtype (bf16 or
# fp16) and the losses in float32; the Function itself then runs with autocast off, so
# nothing inside is cast again. Gradients flow back through ordinary ``.to()`` casts,
# so float32 parameters receive float32 gradients.


_HALF_DTYPES = (torch.bfloat16, torch.float16)


def _apply_autocast(function, *args, low_precision: bool):
    """``function.apply(*args)`` with autocast's casting done explicitly (see above)."""
    device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    dtype = torch.get_autocast_dtype(device) if low_precision else torch.float32
    cast = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
    with torch.autocast(device, enabled=False):
        return function.apply(*cast)


# --------------------------------------------------------------------------- #
# Matrix products
# --------------------------------------------------------------------------- #
# On CPUs, float32 products go through oneDNN (the library behind nn.LSTM's CPU
# kernels) when this torch build has it: torch.mm goes to the BLAS, which was
# measured 2-2.5x slower on the AMD EPYC this project is benchmarked on, for every
# product shape the model uses (benchmarks/README.md). Other dtypes and devices use
# torch.mm. Set CAPTION_TORCH_ONEDNN=0 to always use torch.mm.


def _probe_onednn() -> bool:
    if os.environ.get("CAPTION_TORCH_ONEDNN", "1") == "0":
        return False
    try:
        probe = torch.arange(6.0).view(2, 3)
        product = torch.ops.mkldnn._linear_pointwise(probe, probe, None, "none", [], "")
        return torch.equal(product, probe @ probe.T)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_ONEDNN = _probe_onednn()


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for (M, K) and (K, P) matrices, through oneDNN for CPU float32 (any strides)."""
    if _ONEDNN and a.dtype == torch.float32 and a.device.type == "cpu" and a.numel() and b.numel():
        # _linear_pointwise(x, w) computes x @ w.T with w of shape (out, in).
        return torch.ops.mkldnn._linear_pointwise(a, b.T, None, "none", [], "")
    return torch.mm(a, b)


def _addmm(bias: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``bias + a @ b`` with a (P,) bias broadcast over rows."""
    if _ONEDNN and a.dtype == torch.float32 and a.device.type == "cpu" and a.numel() and b.numel():
        return torch.ops.mkldnn._linear_pointwise(a, b.T, bias, "none", [], "")
    return torch.addmm(bias, a, b)


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
        return _addmm(b, x, Wx).add_(_mm(prev_h, Wh)).tanh_()  # (N, H)

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
        grad_x = _mm(grad_a, Wx.T) if need_x else None
        grad_prev_h = _mm(grad_a, Wh.T) if need_h else None
        grad_Wx = _mm(x.T, grad_a) if need_Wx else None
        grad_Wh = _mm(prev_h.T, grad_a) if need_Wh else None
        grad_b = grad_a.sum(0) if need_b else None
        return grad_x, grad_prev_h, grad_Wx, grad_Wh, grad_b


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
    return _apply_autocast(RNNStep, x, prev_h, Wx, Wh, b, low_precision=True)


# --------------------------------------------------------------------------- #
# LSTM
# --------------------------------------------------------------------------- #
# Gate layout as cs231n's LSTM notebook: a = x Wx + h Wh + b is split into four
# H-wide blocks [i | f | o | g]; i, f, o = sigmoid, g = tanh.
#   c' = f * c + i * g        h' = o * tanh(c')


def _lstm_gates_(a: Tensor) -> Tensor:
    """Turn pre-activations (..., 4H) into gate activations [i, f, o, g] in place."""
    H = a.shape[-1] // 4
    a[..., : 3 * H].sigmoid_()
    a[..., 3 * H :].tanh_()
    return a


def _lstm_backward_coefficients(gates: Tensor, prev_c: Tensor, next_c: Tensor) -> tuple[Tensor, Tensor]:
    """What turns the gradients w.r.t. (next_h, next_c) into gate gradients, for any leading shape.

    With c' = f c + i g and h' = o tanh(c'), the total gradient into c' is
    ``grad_c = grad_c' + grad_h' * o (1 - tanh(c')^2)``, and the gradients w.r.t. the
    pre-activations [a_i, a_f, a_o, a_g] are ``[grad_c, grad_c, grad_h', grad_c] * coefficients``.

    Args:
        gates: (..., 4H) activations [i, f, o, g].
        prev_c, next_c: (..., H) cell states before and after the step.

    Returns:
        ``(coefficients (..., 4H), c_from_h (..., H))`` where c_from_h = o (1 - tanh(c')^2).
        Computed for every timestep at once, outside the sequential loop.
    """
    H = prev_c.shape[-1]
    i, f, o, g = (gates[..., k * H : (k + 1) * H] for k in range(4))
    tanh_c = torch.tanh(next_c)
    coefficients = torch.empty_like(gates)
    # sigmoid'(a) = s (1 - s); tanh'(a) = 1 - t^2
    torch.mul(g, i * (1 - i), out=coefficients[..., :H])
    torch.mul(prev_c, f * (1 - f), out=coefficients[..., H : 2 * H])
    torch.mul(tanh_c, o * (1 - o), out=coefficients[..., 2 * H : 3 * H])
    torch.mul(i, 1 - g * g, out=coefficients[..., 3 * H :])
    return coefficients, o * (1 - tanh_c * tanh_c)


def _lstm_gate_gradients_(coefficients: Tensor, grad_c: Tensor, grad_h: Tensor) -> Tensor:
    """In place: coefficients (N, 4H) become the pre-activation gradients (see above)."""
    N, H = grad_c.shape
    coefficients[:, : 2 * H].view(N, 2, H).mul_(grad_c[:, None])  # i and f
    coefficients[:, 2 * H : 3 * H].mul_(grad_h)  # o
    coefficients[:, 3 * H :].mul_(grad_c)  # g
    return coefficients


class LSTMStep(torch.autograd.Function):
    """One LSTM timestep returning ``(next_h, next_c)``."""

    @staticmethod
    def forward(ctx, x, prev_h, prev_c, Wx, Wh, b):
        gates = _lstm_gates_(_addmm(b, x, Wx).add_(_mm(prev_h, Wh)))  # (N, 4H)
        H = prev_h.shape[1]
        next_c = torch.addcmul(gates[:, :H] * gates[:, 3 * H :], gates[:, H : 2 * H], prev_c)
        next_h = gates[:, 2 * H : 3 * H] * torch.tanh(next_c)
        ctx.save_for_backward(x, prev_h, prev_c, Wx, Wh, gates, next_c)
        return next_h, next_c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_next_h, grad_next_c):
        x, prev_h, prev_c, Wx, Wh, gates, next_c = ctx.saved_tensors
        need_x, need_h, need_c, need_Wx, need_Wh, need_b = ctx.needs_input_grad
        H = prev_c.shape[1]
        coefficients, c_from_h = _lstm_backward_coefficients(gates, prev_c, next_c)
        grad_c = torch.addcmul(grad_next_c, grad_next_h, c_from_h)  # total gradient into next_c
        grad_a = _lstm_gate_gradients_(coefficients, grad_c, grad_next_h)  # (N, 4H)
        return (
            _mm(grad_a, Wx.T) if need_x else None,
            _mm(grad_a, Wh.T) if need_h else None,
            grad_c * gates[:, H : 2 * H] if need_c else None,
            _mm(x.T, grad_a) if need_Wx else None,
            _mm(prev_h.T, grad_a) if need_Wh else None,
            grad_a.sum(0) if need_b else None,
        )


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
    return _apply_autocast(LSTMStep, x, prev_h, prev_c, Wx, Wh, b, low_precision=True)


# --------------------------------------------------------------------------- #
# Sequences: one Function runs the whole time loop, forward and backward
# --------------------------------------------------------------------------- #
# Inside, rows are "packed" time-major: step 0's sequences, then step 1's, ... and a
# sequence that has finished (t >= lengths[n]; lengths sorted, non-increasing) is
# simply absent, so no product or elementwise op ever touches padding:
#
#     x (N, T, D) ─pack─► (P, D) ─one GEMM─► pre-activations (P, gH)      P = sum(lengths)
#     states (N + P, H) = [h0 | h_1 of step 0's rows | h_2 of step 1's rows | ...]
#     step t reads h_t = rows of block t, first n_t of them (n_t = sequences still running)
#     output (N, T, H) ◄─unpack─ states[N:]  (zeros where finished; a transposed view)
#
# Without lengths every sequence runs all T steps; packing is then the identity and
# costs no copy.


class _Packing:
    """Where each (timestep, sequence) pair lives in the packed layout above.

    Args:
        lengths: (N,) non-increasing step counts, or None for all T.
    """

    def __init__(self, lengths: Tensor | None, N: int, T: int) -> None:
        self.N, self.T = N, T
        if lengths is None:
            self.active, self.index = [N] * T, None
        else:
            running = lengths[None, :] > torch.arange(T, device=lengths.device)[:, None]  # (T, N)
            self.active = running.sum(1).tolist()
            self.index = None if all(n == N for n in self.active) else running.reshape(-1).nonzero().squeeze(1)
        self.offsets = [0]
        for n in self.active:
            self.offsets.append(self.offsets[-1] + n)
        self.total = self.offsets[-1]

    def rows(self, t: int) -> slice:
        """Rows of step t in packed (P, ...) tensors."""
        return slice(self.offsets[t], self.offsets[t] + self.active[t])

    def previous_rows(self, t: int) -> slice:
        """Rows of h_t (the state step t reads) in the (N + P, H) states buffer."""
        start = 0 if t == 0 else self.N + self.offsets[t - 1]
        return slice(start, start + self.active[t])

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
        return torch.cat([states[self.previous_rows(t)] for t in range(self.T)])


def _time_major(x: Tensor) -> Tensor:
    """(N, T, C) -> (T*N, C) rows in time-major order; free when x is a transposed time-major tensor."""
    N, T, C = x.shape
    return x.transpose(0, 1).reshape(T * N, C)


def _rnn_forward_loop(pre_activations: Tensor, h0: Tensor, Wh: Tensor, packing: _Packing) -> Tensor:
    """states (N + P, H) from packed pre-activations (P, H): h_{t+1} = tanh(pre_t + h_t @ Wh)."""
    states = pre_activations.new_empty(packing.N + packing.total, h0.shape[1])
    states[: packing.N] = h0
    for t in range(packing.T):
        rows = packing.rows(t)
        out = slice(packing.N + rows.start, packing.N + rows.stop)
        torch.add(pre_activations[rows], _mm(states[packing.previous_rows(t)], Wh), out=states[out]).tanh_()
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
    outputs = states[packing.N :]
    grad_a = 1 - outputs * outputs  # tanh' for every step at once
    T = packing.T
    grad_h = grad_out[packing.rows(T - 1)]
    for t in range(T - 1, -1, -1):
        step = grad_a[packing.rows(t)].mul_(grad_h)
        if t > 0:
            grad_h = _into_previous(_mm(step, Wh.T), grad_out[packing.rows(t - 1)])
    return grad_a


def _lstm_forward_loop(gates: Tensor, h0: Tensor, Wh: Tensor, packing: _Packing) -> tuple[Tensor, Tensor]:
    """Run the LSTM over packed pre-activations ``gates`` (P, 4H), activating them in place.

    Returns:
        ``(states, cells)``, each (N + P, H): [h0 | h_1 ...] and [0 | c_1 ...], packed.
    """
    N, H = packing.N, h0.shape[1]
    states, cells = gates.new_empty(N + packing.total, H), gates.new_empty(N + packing.total, H)
    states[:N], cells[:N] = h0, 0
    for t in range(packing.T):
        rows, prev = packing.rows(t), packing.previous_rows(t)
        out = slice(N + rows.start, N + rows.stop)
        a = _lstm_gates_(gates[rows].add_(_mm(states[prev], Wh)))  # (n_t, 4H) = [i, f, o, g]
        torch.mul(a[:, :H], a[:, 3 * H :], out=cells[out]).addcmul_(a[:, H : 2 * H], cells[prev])
        torch.tanh(cells[out], out=states[out]).mul_(a[:, 2 * H : 3 * H])
    return states, cells


def _lstm_backward_loop(grad_out: Tensor, gates: Tensor, cells: Tensor, Wh: Tensor, packing: _Packing) -> Tensor:
    """grad_a (P, 4H): the gradient w.r.t. every packed gate pre-activation, by BPTT."""
    H, T = Wh.shape[0], packing.T
    forget = gates[:, H : 2 * H]
    # The coefficients of every step at once; the loop turns them into grad_a in place.
    grad_a, c_from_h = _lstm_backward_coefficients(gates, packing.previous_states(cells), cells[packing.N :])
    grad_h = grad_out[packing.rows(T - 1)]
    carry = torch.zeros_like(grad_h)  # gradient into c_{t+1} from step t + 1
    for t in range(T - 1, -1, -1):
        rows = packing.rows(t)
        if carry.shape[0] < grad_h.shape[0]:  # sequences whose last step is t had nothing after them
            carry = torch.cat([carry, carry.new_zeros(grad_h.shape[0] - carry.shape[0], H)])
        grad_c = torch.addcmul(carry, grad_h, c_from_h[rows])  # total gradient into c_{t+1}
        step = _lstm_gate_gradients_(grad_a[rows], grad_c, grad_h)
        if t > 0:
            carry = grad_c * forget[rows]
            grad_h = _into_previous(_mm(step, Wh.T), grad_out[packing.rows(t - 1)])
    return grad_a


def _after_the_loop(ctx, grad_a: Tensor, states: Tensor, x_packed: Tensor | None, Wx: Tensor | None, Wh: Tensor):
    """The gradients that follow the time loop: one GEMM each for h0, x, Wx and Wh, and a sum for b."""
    packing: _Packing = ctx.packing
    needs = dict(zip(ctx.input_names, ctx.needs_input_grad))
    grads: dict[str, Tensor | None] = {}
    if needs.get("h0"):
        first = packing.rows(0)
        grads["h0"] = states.new_zeros(packing.N, states.shape[1])
        grads["h0"][: packing.active[0]] = _mm(grad_a[first], Wh.T)
    if needs.get("Wh"):
        grads["Wh"] = _mm(packing.previous_states(states).T, grad_a)
    if needs.get("b"):
        grads["b"] = grad_a.sum(0)
    if needs.get("x_projected"):
        grads["x_projected"] = packing.unpack(grad_a)
    if needs.get("x"):
        grads["x"] = packing.unpack(_mm(grad_a, Wx.T))
    if needs.get("Wx"):
        grads["Wx"] = _mm(x_packed.T, grad_a)
    return tuple(grads.get(name) for name in ctx.input_names)


def _own_copy(packed: Tensor, source: Tensor) -> Tensor:
    """``packed`` if it is already a new tensor, else a copy (the LSTM activates it in place)."""
    shares = packed.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    return packed.clone() if shares else packed


class RNN(torch.autograd.Function):
    """A vanilla RNN over a whole sequence; backward runs backprop-through-time itself."""

    @staticmethod
    def forward(ctx, x, h0, Wx, Wh, b, lengths):
        N, T, _ = x.shape
        packing = _Packing(lengths, N, T)
        x_packed = packing.pack(_time_major(x))  # (P, D)
        states = _rnn_forward_loop(_addmm(b, x_packed, Wx), h0, Wh, packing)  # one GEMM for all inputs
        ctx.save_for_backward(x_packed, Wx, Wh, states)
        ctx.packing, ctx.input_names = packing, ("x", "h0", "Wx", "Wh", "b", "lengths")
        return packing.unpack(states[N:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x_packed, Wx, Wh, states = ctx.saved_tensors
        grad_out = ctx.packing.pack(_time_major(grad_output))
        grad_a = _rnn_backward_loop(grad_out, states, Wh, ctx.packing)
        return _after_the_loop(ctx, grad_a, states, x_packed, Wx, Wh)


class RNNProjected(torch.autograd.Function):
    """The RNN's time loop alone, for inputs already multiplied by Wx (plus b)."""

    @staticmethod
    def forward(ctx, x_projected, h0, Wh, lengths):
        N, T, _ = x_projected.shape
        packing = _Packing(lengths, N, T)
        states = _rnn_forward_loop(packing.pack(_time_major(x_projected)), h0, Wh, packing)
        ctx.save_for_backward(Wh, states)
        ctx.packing, ctx.input_names = packing, ("x_projected", "h0", "Wh", "lengths")
        return packing.unpack(states[N:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        Wh, states = ctx.saved_tensors
        grad_out = ctx.packing.pack(_time_major(grad_output))
        grad_a = _rnn_backward_loop(grad_out, states, Wh, ctx.packing)
        return _after_the_loop(ctx, grad_a, states, None, None, Wh)


class LSTM(torch.autograd.Function):
    """An LSTM over a whole sequence (initial cell state zero); backward runs BPTT itself.

    Saved for backward: the packed gate activations (P, 4H) and hidden and cell states
    (N + P, H). The backward loop does only what is sequential (a few small ops and
    one GEMM per step); what can be computed for all steps at once is, before it.
    """

    @staticmethod
    def forward(ctx, x, h0, Wx, Wh, b, lengths):
        N, T, _ = x.shape
        packing = _Packing(lengths, N, T)
        x_packed = packing.pack(_time_major(x))  # (P, D)
        gates = _addmm(b, x_packed, Wx)  # (P, 4H) pre-activations, activated in place by the loop
        states, cells = _lstm_forward_loop(gates, h0, Wh, packing)
        ctx.save_for_backward(x_packed, Wx, Wh, gates, states, cells)
        ctx.packing, ctx.input_names = packing, ("x", "h0", "Wx", "Wh", "b", "lengths")
        return packing.unpack(states[N:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x_packed, Wx, Wh, gates, states, cells = ctx.saved_tensors
        grad_out = ctx.packing.pack(_time_major(grad_output))
        grad_a = _lstm_backward_loop(grad_out, gates, cells, Wh, ctx.packing)
        return _after_the_loop(ctx, grad_a, states, x_packed, Wx, Wh)


class LSTMProjected(torch.autograd.Function):
    """The LSTM's time loop alone, for inputs already multiplied by Wx (plus b)."""

    @staticmethod
    def forward(ctx, x_projected, h0, Wh, lengths):
        N, T, _ = x_projected.shape
        packing = _Packing(lengths, N, T)
        gates = _own_copy(packing.pack(_time_major(x_projected)), x_projected)  # (P, 4H)
        states, cells = _lstm_forward_loop(gates, h0, Wh, packing)
        ctx.save_for_backward(Wh, gates, states, cells)
        ctx.packing, ctx.input_names = packing, ("x_projected", "h0", "Wh", "lengths")
        return packing.unpack(states[N:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        Wh, gates, states, cells = ctx.saved_tensors
        grad_out = ctx.packing.pack(_time_major(grad_output))
        grad_a = _lstm_backward_loop(grad_out, gates, cells, Wh, ctx.packing)
        return _after_the_loop(ctx, grad_a, states, None, None, Wh)


def _check_lengths(lengths: Tensor | None, N: int, T: int) -> None:
    if lengths is None:
        return
    if not isinstance(lengths, Tensor) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {getattr(lengths, 'dtype', type(lengths))}")
    if lengths.shape != (N,):
        raise ValueError(f"lengths must have shape ({N},) (one per sequence), got {tuple(lengths.shape)}")
    if N and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [0, {T}] (the number of timesteps)")
    if N > 1 and bool((lengths[1:] > lengths[:-1]).any()):
        raise ValueError("lengths must be sorted in non-increasing order (sort the batch by length)")


def _check_projected(x_projected: Tensor, h0: Tensor, Wh: Tensor, gates: int) -> None:
    _check_float("x_projected", x_projected, 3)
    _check_float("h0", h0, 2)
    _check_float("Wh", Wh, 2)
    _check_same_dtype(x_projected=x_projected, h0=h0, Wh=Wh)
    H = h0.shape[1]
    _check_dim("h0", h0, 0, x_projected.shape[0], "the batch size of x_projected")
    _check_dim("Wh", Wh, 0, H, "the hidden width")
    _check_dim("Wh", Wh, 1, gates * H, f"{gates} x the hidden width")
    _check_dim("x_projected", x_projected, 2, gates * H, f"{gates} x the hidden width")


def rnn(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor, lengths: Tensor | None = None) -> Tensor:
    """A vanilla RNN run over a whole sequence.

    Args:
        x: (N, T, D) input sequence.
        h0: (N, H) initial hidden state.
        Wx: (D, H), Wh: (H, H), b: (H,) as in :func:`rnn_step`.
        lengths: optional (N,) non-increasing integers in [0, T]: sequence n needs only its
            first lengths[n] steps; its later outputs are zero and get no gradient.

    Returns:
        (N, T, H) hidden states of every timestep (h0 not included).
    """
    _check_recurrent(x, h0, Wx, Wh, b, gates=1, x_ndim=3)
    _check_lengths(lengths, x.shape[0], x.shape[1])
    return _apply_autocast(RNN, x, h0, Wx, Wh, b, lengths, low_precision=True)


def rnn_projected(x_projected: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`rnn` for inputs already projected: ``rnn(x, h0, Wx, Wh, b) == rnn_projected(x @ Wx + b, h0, Wh)``.

    Args:
        x_projected: (N, T, H) input projections (e.g. rows of a per-word table).
        h0: (N, H), Wh: (H, H), lengths: as :func:`rnn`.

    Returns:
        (N, T, H) hidden states.
    """
    _check_projected(x_projected, h0, Wh, gates=1)
    _check_lengths(lengths, x_projected.shape[0], x_projected.shape[1])
    return _apply_autocast(RNNProjected, x_projected, h0, Wh, lengths, low_precision=True)


def lstm(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor, lengths: Tensor | None = None) -> Tensor:
    """An LSTM run over a whole sequence; the initial cell state is zero.

    Args:
        x: (N, T, D) input sequence.
        h0: (N, H) initial hidden state.
        Wx: (D, 4H), Wh: (H, 4H), b: (4H,) as in :func:`lstm_step`.
        lengths: optional (N,) non-increasing step counts, as :func:`rnn`.

    Returns:
        (N, T, H) hidden states of every timestep.
    """
    _check_recurrent(x, h0, Wx, Wh, b, gates=4, x_ndim=3)
    _check_lengths(lengths, x.shape[0], x.shape[1])
    return _apply_autocast(LSTM, x, h0, Wx, Wh, b, lengths, low_precision=True)


def lstm_projected(x_projected: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
    """:func:`lstm` for inputs already projected: ``lstm(x, h0, Wx, Wh, b) == lstm_projected(x @ Wx + b, h0, Wh)``.

    Args:
        x_projected: (N, T, 4H) input projections.
        h0: (N, H), Wh: (H, 4H), lengths: as :func:`lstm`.

    Returns:
        (N, T, H) hidden states.
    """
    _check_projected(x_projected, h0, Wh, gates=4)
    _check_lengths(lengths, x_projected.shape[0], x_projected.shape[1])
    return _apply_autocast(LSTMProjected, x_projected, h0, Wh, lengths, low_precision=True)


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
        return _addmm(b, x.reshape(N * T, D), w).view(N, T, w.shape[1])

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
        grad_x = _mm(grad_flat, w.T).view(N, T, D) if ctx.needs_input_grad[0] else None
        grad_w = _mm(x.reshape(N * T, D).T, grad_flat) if ctx.needs_input_grad[1] else None
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
    return _apply_autocast(TemporalAffine, x, w, b, low_precision=True)


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
        keep = mask.bool()  # (N, T)
        # Boolean indexing reads the K scored rows in (n, t) order from any strides: the
        # time-major view that rnn/lstm return is not copied whole.
        scored = hidden[keep]  # (K, H)
        targets = y[keep]  # (K,)
        # The product may be bf16/fp16 under autocast; the softmax and the loss are float32.
        scores = _addmm(b_vocab, scored, W_vocab)  # (K, V)
        log_probs = _log_softmax_(scores.float() if scores.dtype in _HALF_DTYPES else scores)
        loss = -log_probs.gather(1, targets[:, None]).sum() / hidden.shape[0]
        ctx.save_for_backward(hidden, scored, W_vocab, keep, targets, log_probs.exp_())
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        hidden, scored, W_vocab, keep, targets, probs = ctx.saved_tensors
        need_hidden, need_W, need_b = ctx.needs_input_grad[:3]
        grad_scores = _softmax_loss_grad(probs, targets, grad_loss / hidden.shape[0]).to(scored.dtype)  # (K, V)
        grad_hidden = None
        if need_hidden:
            # zeros_like keeps hidden's strides, so the gradient has the layout rnn/lstm expect.
            grad_hidden = torch.zeros_like(hidden)
            grad_hidden[keep] = _mm(grad_scores, W_vocab.T)
        grad_W = _mm(scored.T, grad_scores) if need_W else None
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
    return _apply_autocast(TemporalSoftmaxLoss, x, y, mask, low_precision=False)


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
    return _apply_autocast(VocabSoftmaxLoss, hidden, W_vocab, b_vocab, y, mask, low_precision=True)
