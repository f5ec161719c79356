"""The Transformer decoder on packed captions: only the positions that can affect the loss are computed.

Attention is causal, so a caption's position t depends on positions 0..t only, and the
positions after its last scored word change no score. Packing keeps, per caption, the
prefix of positions up to its last scored word, row by row (``P`` rows in all)::

    captions (N, T)      computed (N, T)        packed rows (P, W)
    S a b c E . .        1 1 1 1 1 0 0          S a b c E            caption 0, positions 0..4
    S d E . . . .        1 1 1 0 0 0 0    ->    S d E                caption 1, positions 0..2
    S e f g h i E        1 1 1 1 1 1 1          S e f g h i E        caption 2, positions 0..6

The position-wise layers (linear maps, layer norm, the feed-forward block, the output map)
run on the (P, W) rows as they are. Self-attention scatters its projected rows into an
(N, L, 3W) block (L: the longest computed prefix) for the causal scores of each caption;
attention to the one-key memory needs one output row per image and head; attention to M > 1 memory
vectors places the rows back at their (N, L) positions for the dense attention Function.

Dropout masks: inside :func:`mkl_dropout` they are drawn at the full (N, T, ...) shape the
unpacked model draws and the rows of the computed positions are kept, so the masks are
cs231n's and the values those of the unpacked model. Otherwise (the default masks) only the
computed rows are drawn: the same distribution, without paying for the padding's masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _addmm,
    _apply_autocast,
    _attend,
    _attend_backward,
    _check_float,
    _check_input,
    _check_packing,
    _check_same_dtype,
    _mm,
    _mm_at,
    _save_with_intermediates,
    _unless_unused,
)
from caption_torch.functional.attention import MultiHeadAttention
from caption_torch.functional.checks import check_positive_integer
from caption_torch.functional.dropout import Dropout, check_probability, dropout_noise, drops, uses_mkl_masks
from caption_torch.functional.words import PlaceRows, SelectRows


@dataclass(frozen=True)
class CausalPacking:
    """Which positions of (N, T) captions are computed (see the module docstring).

    Attributes:
        computed: (N, T) bool, a prefix of every row: True where the position is computed.
        longest: L, the longest prefix (at least 1).
        images: (P,) the caption (row of the batch) of each packed row.
    """

    computed: Tensor
    longest: int
    images: Tensor

    @property
    def rows(self) -> int:
        """P, the number of packed rows."""
        return self.images.shape[0]

    def check_rows(self, x: Tensor) -> None:
        """x must be (P, W) floating-point rows of this packing."""
        _check_float("x", x, 2)
        if x.shape[0] != self.rows:
            raise ValueError(f"x has {x.shape[0]} rows but the packing has P = {self.rows}")

    def row_noise(self, width: int, p: float, training: bool, x: Tensor) -> Tensor:
        """(P, width) dropout noise for x's packed rows, or a scalar (1: keeps all, 0: drops all): drawn at
        (N, T, width) and the computed rows kept inside :func:`mkl_dropout`, drawn at (P, width) otherwise."""
        if not uses_mkl_masks():
            return _draw((self.rows, width), p, training, x.dtype, x.device)
        noise = _draw((*self.computed.shape, width), p, training, x.dtype, x.device)
        return noise[self.computed] if noise.dim() else noise


def causal_packing(lengths: Tensor, T: int) -> CausalPacking:
    """The packing of captions whose first ``lengths[n]`` positions (of T) are computed.

    Args:
        lengths: (N,) integers in [0, T], at least one of them positive.
        T: the positions each caption has.
    """
    # int32/int64 only, as token ids: repeat_interleave takes no other integer dtype (nor bool).
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lengths must be an (N,) int64 (or int32) tensor, got {lengths!r:.80}")
    check_positive_integer("T", T)
    low, high = (int(v) for v in torch.stack(torch.aminmax(lengths)).tolist()) if lengths.numel() else (0, 0)
    if low < 0 or high > T or high < 1:
        raise ValueError(f"lengths must lie in [0, T = {T}] with at least one positive, got range [{low}, {high}]")
    computed = torch.arange(T, device=lengths.device) < lengths[:, None]  # (N, T)
    images = torch.arange(lengths.shape[0], device=lengths.device).repeat_interleave(lengths)  # (P,)
    return CausalPacking(computed, high, images)


def _draw(shape: tuple[int, ...], p: float, training: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The noise a dropout of a ``shape`` tensor multiplies by, or a scalar (1: keeps all, 0: drops all)."""
    like = torch.empty(shape, dtype=dtype, device=device)  # never written: only its shape is read
    if drops(p, training, like):
        return dropout_noise(like, p)
    return torch.tensor(0.0 if training and p == 1 else 1.0, dtype=dtype, device=device)


def _attention_noise(
    packing: CausalPacking, heads: int, keys: int, unpacked_keys: int, p: float, training: bool, x: Tensor
) -> Tensor:
    """(N, H, L, keys) noise for the attention weights of the L longest prefixes' queries, or a scalar:
    drawn at the unpacked (N, H, T, unpacked_keys) shape and cut inside :func:`mkl_dropout` (views, no copy),
    drawn at (N, H, L, keys) otherwise."""
    N, T = packing.computed.shape
    L = packing.longest
    if uses_mkl_masks():
        noise = _draw((N, heads, T, unpacked_keys), p, training, x.dtype, x.device)
        return noise[:, :, :L, :keys] if noise.dim() else noise
    return _draw((N, heads, L, keys), p, training, x.dtype, x.device)


# --------------------------------------------------------------------------- #
# Packing and the position-wise layers
# --------------------------------------------------------------------------- #


def pack_rows(x: Tensor, packing: CausalPacking) -> Tensor:
    """The computed positions of x as packed rows.

    Args:
        x: (N, T, ...) one entry per caption position.
        packing: from :func:`causal_packing` for these N captions of T positions.

    Returns:
        (P, ...) the rows of the computed positions, caption by caption.
    """
    _check_input("x", x, 2)
    _check_packing(packing)
    if tuple(x.shape[:2]) != tuple(packing.computed.shape):
        raise ValueError(f"x has (N, T) = {tuple(x.shape[:2])} but the packing is of {tuple(packing.computed.shape)}")
    return SelectRows.apply(x, packing.computed)


def packed_dropout(x: Tensor, packing: CausalPacking, p: float, training: bool = True) -> Tensor:
    """:func:`dropout` of packed rows, with the mask the unpacked (N, T, W) tensor would get.

    Args:
        x: (P, W) packed rows.
        packing: their packing.
        p: dropout probability; training: False returns x.

    Returns:
        (P, W).
    """
    _check_packing(packing)
    packing.check_rows(x)
    check_probability("p", p)
    noise = packing.row_noise(x.shape[1], p, training, x)
    if noise.dim() == 0 and noise.item() == 1:
        return x
    return _apply_autocast(Dropout, x, noise, low_precision=True)


# --------------------------------------------------------------------------- #
# Attention
# --------------------------------------------------------------------------- #


class PackedSelfAttention(torch.autograd.Function):
    """Causal multi-head self-attention of packed rows (``multi_head_attention`` with the causal mask).

    ``computed`` (N, L) bool, prefixes; ``noise`` (N, H, L, L) or a scalar. The query, key and
    value maps run as one (P, W) @ (W, 3W) product; their rows are scattered, head by head,
    into a (3, N, H, L, W/H) block (zeros past each prefix: the causal mask keeps them from every
    computed query) for the scores, and the context rows of the computed positions are
    gathered back.
    """

    @staticmethod
    def forward(x, W_query, b_query, W_key, b_key, W_value, b_value, W_proj, b_proj, computed, noise, heads):
        P, E = x.shape
        N, L = computed.shape
        W_qkv = torch.cat([W_query, W_key, W_value])  # (3E, E)
        rows = _addmm(torch.cat([b_query, b_key, b_value]), x, W_qkv.T)  # (P, 3E)
        qkv = x.new_zeros(3, N, heads, L, E // heads)  # one copy into the layout the batched products read
        qkv.permute(1, 3, 0, 2, 4)[computed] = rows.view(P, 3, heads, E // heads)
        Q, K, V = qkv  # (N, H, L, d) each
        later = torch.ones(L, L, dtype=torch.bool, device=x.device).triu_(1)  # the causal mask's blocked keys
        weights, dropped, context = _attend(Q, K, V, noise, later)  # (N, H, L, L) twice, (N, H, L, d)
        context = context.transpose(1, 2)[computed].view(P, E)  # (P, H, d) -> (P, E)
        out = _addmm(b_proj, context, W_proj.T)
        return out, W_qkv, qkv, weights, dropped, context  # the intermediates are outputs that setup_context saves

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        x, _, _, _, _, _, _, W_proj, _, computed, noise, heads = inputs
        _, W_qkv, qkv, weights, dropped, context = output
        _save_with_intermediates(
            ctx,
            (x, W_qkv, W_proj, qkv, weights, dropped, noise, context, computed),
            (W_qkv, qkv, weights, dropped, context),
        )

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_out: Tensor, *_grad_intermediates: None):
        x, W_qkv, W_proj, qkv, weights, dropped, noise, context, computed = ctx.saved_tensors
        need_x, need_Wq, need_bq, need_Wk, need_bk, need_Wv, need_bv, need_Wp, need_bp = ctx.needs_input_grad[:9]
        P, E = x.shape
        _, N, heads, L, d = qkv.shape
        grad_W_proj = _mm_at(grad_out, context) if need_Wp else None
        grad_b_proj = grad_out.sum(0) if need_bp else None
        if not any(ctx.needs_input_grad[:7]):
            return (None,) * 7 + (grad_W_proj, grad_b_proj, None, None, None)
        grad_context = x.new_zeros(N, heads, L, d)
        grad_context.transpose(1, 2)[computed] = _mm(grad_out, W_proj).view(P, heads, d)
        grad_qkv = torch.empty_like(qkv)  # (3, N, H, L, d)
        _attend_backward(grad_context, *qkv, weights, dropped, noise, out=tuple(grad_qkv))
        # (P, 3, H, d) -> (P, 3E): query, key, value side by side, as the rows of W_qkv
        grad_rows = grad_qkv.permute(1, 3, 0, 2, 4)[computed].view(P, 3 * E)
        grad_x = _mm(grad_rows, W_qkv) if need_x else None
        grad_W = _mm_at(grad_rows, x).split(E) if need_Wq or need_Wk or need_Wv else (None,) * 3
        grad_b = grad_rows.sum(0).split(E) if need_bq or need_bk or need_bv else (None,) * 3
        return (grad_x, grad_W[0], grad_b[0], grad_W[1], grad_b[1], grad_W[2], grad_b[2], grad_W_proj, grad_b_proj,
                None, None, None)  # fmt: skip


class PackedSingleKeyAttention(torch.autograd.Function):
    """Attention of packed rows to a one-key memory per caption (``SingleKeyAttention`` on packed rows).

    The weight of the one key is 1, so only the dropout noise and the image's value matter:
    ``out[p] = b_proj + sum_h noise[p, h] * (V[n, h] @ W_proj[:, h].T)`` for p's caption n.
    The (N, H, W) per-head products are computed once per image, not once per row.
    ``images`` (P,), ``noise`` (P, H) or a scalar. Queries and keys get zero gradients.
    """

    @staticmethod
    def forward(x, memory, W_query, b_query, W_key, b_key, W_value, b_value, W_proj, b_proj, images, noise, heads):
        N, _, E = memory.shape
        V = _addmm(b_value, memory.view(N, E), W_value.T)  # (N, E)
        if noise.dim() == 0:
            per_image = _addmm(b_proj, V * noise, W_proj.T)  # (N, E)
            out = per_image.index_select(0, images)
        else:
            d = E // heads
            per_head = torch.bmm(V.view(N, heads, d).transpose(0, 1), W_proj.view(E, heads, d).permute(1, 2, 0))
            out = torch.baddbmm(b_proj, noise[:, None, :], per_head.index_select(1, images).transpose(0, 1))[:, 0]
        return out, V  # (P, E); the values are an output that setup_context saves

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        x, memory, W_query, _, W_key, _, W_value, _, W_proj, _, images, noise, heads = inputs
        _, V = output
        _save_with_intermediates(ctx, (x, memory, W_query, W_key, W_value, W_proj, V, images, noise), (V,))
        ctx.heads = heads

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_out: Tensor, _grad_V: None):
        x, memory, W_query, W_key, W_value, W_proj, V, images, noise = ctx.saved_tensors
        needs = ctx.needs_input_grad
        N, _, E = memory.shape
        heads = ctx.heads
        grad_b_proj = grad_out.sum(0) if needs[9] else None
        if noise.dim() == 0:
            grad_image = grad_out.new_zeros(N, E).index_add_(0, images, grad_out)  # (N, E): summed over its rows
            grad_W_proj = _mm_at(grad_image, V * noise) if needs[8] else None
            grad_V = _mm(grad_image, W_proj).mul_(noise)
        else:
            d = E // heads
            # grad_heads[h, n] = sum over n's rows of noise[p, h] * grad_out[p]  (H, N, E)
            weighted = noise.T[:, :, None] * grad_out  # (H, P, E)
            grad_heads = grad_out.new_zeros(heads, N, E).index_add_(1, images, weighted)
            V_heads = V.view(N, heads, d).transpose(0, 1)  # (H, N, d)
            grad_W_proj = None
            if needs[8]:  # (H, E, d) blocks, head h's in columns h*d..(h+1)*d of W_proj
                grad_W_proj = torch.bmm(grad_heads.transpose(1, 2), V_heads).transpose(0, 1).reshape(E, E)
            grad_V = torch.bmm(grad_heads, W_proj.view(E, heads, d).transpose(0, 1)).transpose(0, 1).reshape(N, E)
        grad_memory = _mm(grad_V, W_value).view(memory.shape) if needs[1] else None
        grad_W_value = _mm_at(grad_V, memory.view(N, E)) if needs[6] else None
        grad_b_value = grad_V.sum(0) if needs[7] else None

        def zeros(tensor, need):
            return torch.zeros_like(tensor) if need else None

        return (zeros(x, needs[0]), grad_memory, zeros(W_query, needs[2]), zeros(W_query[0], needs[3]),
                zeros(W_key, needs[4]), zeros(W_key[0], needs[5]), grad_W_value, grad_b_value, grad_W_proj,
                grad_b_proj, None, None, None)  # fmt: skip


_ATTENTION_WEIGHT_NAMES = ("W_query", "b_query", "W_key", "b_key", "W_value", "b_value", "W_proj", "b_proj")


def _check_attention_weights(x: Tensor, num_heads: int, weights: Sequence[Tensor]) -> dict[str, Tensor]:
    """The eight (E, E) and (E,) maps of attention for x (P, E), checked; returned by name, in the Functions' order."""
    if isinstance(weights, Tensor) or len(weights) != len(_ATTENTION_WEIGHT_NAMES):
        raise ValueError(f"maps must be the eight weights and biases {', '.join(_ATTENTION_WEIGHT_NAMES)}")
    named = dict(zip(_ATTENTION_WEIGHT_NAMES, weights))
    E = x.shape[1]
    check_positive_integer("num_heads", num_heads)
    if E % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the width {E} of x")
    for name, tensor in named.items():
        expected = (E, E) if name.startswith("W") else (E,)
        _check_float(name, tensor, len(expected))
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} for the width of x, got {tuple(tensor.shape)}")
    return named


def packed_attention(x: Tensor, memory: Tensor | None, maps: Sequence[Tensor], num_heads: int, packing: CausalPacking,
                     dropout_p: float = 0.0, training: bool = True) -> Tensor:  # fmt: skip
    """The computed rows of :func:`multi_head_attention` of the unpacked captions: causal self-attention
    (``memory`` None: query = key = value = the captions, the causal mask), or attention to each caption's
    memory (query = the captions, key = value = memory, no mask); weights dropped as there.

    Args:
        x: (P, E) packed rows (the queries).
        memory: None, or (N, M, E): M keys and values per caption (M = 1: one image vector, computed
            without queries or scores, as the weight of a single key is 1).
        maps: the eight weights and biases of :func:`multi_head_attention`, in its order: W_query (E, E),
            b_query (E,), W_key, b_key, W_value, b_value, W_proj, b_proj.
        num_heads: H, dividing E.
        packing: the rows' packing.
        dropout_p, training: dropout of the attention weights (masks of the unpacked (N, H, T, T or M)
            weights inside :func:`mkl_dropout`).

    Returns:
        (P, E).
    """
    _check_packing(packing)
    packing.check_rows(x)
    N, T = packing.computed.shape
    L = packing.longest
    if memory is not None:
        _check_float("memory", memory, 3)
        if memory.shape[0] != N or memory.shape[2] != x.shape[1] or memory.shape[1] == 0:
            raise ValueError(
                f"memory must have shape (N, M, E) = ({N}, M >= 1, {x.shape[1]}), got {tuple(memory.shape)}"
            )
    named = _check_attention_weights(x, num_heads, maps)
    tensors = {"x": x} if memory is None else {"x": x, "memory": memory}
    _check_same_dtype(**tensors, **named)
    check_probability("dropout_p", dropout_p)
    if memory is None:
        noise = _attention_noise(packing, num_heads, L, T, dropout_p, training, x)  # (N, H, L, L) of (N, H, T, T)
        return _apply_autocast(PackedSelfAttention, x, *named.values(), packing.computed[:, :L], noise, num_heads,
                               low_precision=True)[0]  # fmt: skip
    M = memory.shape[1]
    if M > 1:  # the computed rows of the dense attention of (N, L, E) queries, zeros past each prefix
        computed = packing.computed[:, :L]
        noise = _attention_noise(packing, num_heads, M, M, dropout_p, training, x)  # (N, H, L, M)
        queries = _apply_autocast(PlaceRows, x, computed, low_precision=True)
        everywhere = torch.ones((), dtype=torch.bool, device=x.device)
        attended = _apply_autocast(MultiHeadAttention, queries, memory, memory, *named.values(), everywhere, noise,
                                   num_heads, low_precision=True)[0]  # fmt: skip
        return _apply_autocast(SelectRows, attended, computed, low_precision=True)
    if uses_mkl_masks():
        noise = _draw((N, num_heads, T, 1), dropout_p, training, x.dtype, x.device)
        noise = noise[..., 0].transpose(1, 2)[packing.computed] if noise.dim() else noise  # (P, H)
    else:
        noise = _draw((packing.rows, num_heads), dropout_p, training, x.dtype, x.device)
    return _apply_autocast(PackedSingleKeyAttention, x, memory, *named.values(), packing.images, noise, num_heads,
                           low_precision=True)[0]  # fmt: skip
