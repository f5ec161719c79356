"""Multi-head attention as one Function: projections, scaled scores, mask, softmax, dropout, weighted sum, output map.

cs231n's ``MultiHeadAttention``, with E = embed width, H heads of width d = E / H,
S query positions and T key/value positions::

    Q = query @ W_query.T + b_query   (N, S, E) -> (N, H, S, d)     heads side by side in E
    K = key   @ W_key.T   + b_key     (N, T, E) -> (N, H, T, d)
    V = value @ W_value.T + b_value   (N, T, E) -> (N, H, T, d)
    weights = softmax(Q K^T / sqrt(d), masked to -inf where the mask is 0)   (N, H, S, T)
    context = (weights * dropout noise) @ V                                  (N, H, S, d) -> (N, S, E)
    out     = context @ W_proj.T + b_proj                                    (N, S, E)

Weights are (out, in), ``nn.Linear``'s layout. Backward runs the same chain in reverse by
hand; the softmax's gradient is ``weights * (g - sum(g * weights))`` per row. Attention to a
single key without a mask (the captioner's attention to its image) has weights of 1 whatever
the query, so :class:`SingleKeyAttention` computes it without queries or scores.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _addmm,
    _apply_autocast,
    _attend,
    _attend_backward,
    _check_dim,
    _check_float,
    _check_same_dtype,
    _merge_heads,
    _mm,
    _project,
    _rows,
    _save_with_intermediates,
    _split_heads,
    _unless_unused,
)
from caption_torch.functional.checks import check_positive_integer
from caption_torch.functional.dropout import check_probability, dropout_noise, drops


class MultiHeadAttention(torch.autograd.Function):
    """The attention sketched above; ``allowed`` (S, T) bool or a 0-dim True (no mask), ``noise`` (N, H, S, T)
    or a scalar 1."""

    @staticmethod
    def forward(query, key, value, W_query, b_query, W_key, b_key, W_value, b_value, W_proj, b_proj, allowed, noise,
                heads):  # fmt: skip
        N, S, E = query.shape
        Q = _split_heads(_project(query, W_query, b_query), heads)  # (N, H, S, d)
        K = _split_heads(_project(key, W_key, b_key), heads)  # (N, H, T, d)
        V = _split_heads(_project(value, W_value, b_value), heads)  # (N, H, T, d)
        blocked = None if allowed.dim() == 0 else ~allowed  # a 0-dim True: no mask
        weights, dropped, context = _attend(Q, K, V, noise, blocked)  # (N, H, S, T) twice, (N, H, S, d)
        context = _merge_heads(context)  # (N * S, E)
        out = _addmm(b_proj, context, W_proj.T).view(N, S, E)
        return out, Q, K, V, weights, dropped, context  # the intermediates are outputs that setup_context saves

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        query, key, value, W_query, _, W_key, _, W_value, _, W_proj, _, _, noise, heads = inputs
        _, Q, K, V, weights, dropped, context = output
        _save_with_intermediates(
            ctx,
            (query, key, value, W_query, W_key, W_value, W_proj, Q, K, V, weights, dropped, noise, context),
            (Q, K, V, weights, dropped, context),
        )

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_out: Tensor, *_grad_intermediates: None):
        query, key, value, W_query, W_key, W_value, W_proj, Q, K, V, weights, dropped, noise, context = (
            ctx.saved_tensors
        )
        (need_query, need_key, need_value, need_Wq, need_bq, need_Wk, need_bk, need_Wv, need_bv, need_Wp,
         need_bp) = ctx.needs_input_grad[:11]  # fmt: skip
        N, S, E = query.shape
        heads = Q.shape[1]
        grad_rows = grad_out.reshape(N * S, E)
        grad_W_proj = _mm(grad_rows.T, context) if need_Wp else None  # (E, E) as (out, in)
        grad_b_proj = grad_rows.sum(0) if need_bp else None
        if not any(ctx.needs_input_grad[:9]):  # only the output map's parameters: nothing flows further back
            return (None,) * 9 + (grad_W_proj, grad_b_proj, None, None, None)
        grad_context = _split_heads(_mm(grad_rows, W_proj).view(N, S, E), heads)  # (N, H, S, d)
        grad_Q, grad_K, grad_V = _attend_backward(grad_context, Q, K, V, weights, dropped, noise)

        def input_grads(grad_heads, x, W, need_x, need_W, need_b):
            grad_projected = _merge_heads(grad_heads)  # (N * L, E)
            grad_x = _mm(grad_projected, W).view(x.shape) if need_x else None
            grad_W = _mm(grad_projected.T, _rows(x)) if need_W else None
            grad_b = grad_projected.sum(0) if need_b else None
            return grad_x, grad_W, grad_b

        grad_query, grad_Wq, grad_bq = input_grads(grad_Q, query, W_query, need_query, need_Wq, need_bq)
        grad_key, grad_Wk, grad_bk = input_grads(grad_K, key, W_key, need_key, need_Wk, need_bk)
        grad_value, grad_Wv, grad_bv = input_grads(grad_V, value, W_value, need_value, need_Wv, need_bv)
        return (grad_query, grad_key, grad_value, grad_Wq, grad_bq, grad_Wk, grad_bk, grad_Wv, grad_bv,
                grad_W_proj, grad_b_proj, None, None, None)  # fmt: skip


class SingleKeyAttention(torch.autograd.Function):
    """:class:`MultiHeadAttention` with one key and no mask: the captioner's attention to its image.

    The softmax over one key is 1 whatever the query, so the weights are the dropout noise
    alone and ``context[n, h, s] = noise[n, h, s] * V[n, h]``: no query or key projection, no
    scores. Their gradients are exactly zero, as autograd gives through the softmax.
    """

    @staticmethod
    def forward(query, key, value, W_query, b_query, W_key, b_key, W_value, b_value, W_proj, b_proj, noise, heads):
        N, S, E = query.shape
        V = _split_heads(_project(value, W_value, b_value), heads)  # (N, H, 1, d)
        if noise.dim() == 0:  # every weight noise * 1: one output row per image, the same at every position
            context = _merge_heads(V * noise)  # (N, E)
            out = _addmm(b_proj, context, W_proj.T)[:, None].expand(N, S, E).contiguous()
        else:
            context = _merge_heads(noise * V)  # (N * S, E)
            out = _addmm(b_proj, context, W_proj.T).view(N, S, E)
        return out, V, context  # the intermediates are outputs that setup_context saves

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        query, key, value, W_query, _, W_key, _, W_value, _, W_proj, _, noise, _ = inputs
        _, V, context = output
        _save_with_intermediates(
            ctx, (query, key, value, W_query, W_key, W_value, W_proj, V, noise, context), (V, context)
        )

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_out: Tensor, *_grad_intermediates: None):
        query, key, value, W_query, W_key, W_value, W_proj, V, noise, context = ctx.saved_tensors
        needs = ctx.needs_input_grad
        N, S, E = query.shape
        heads = V.shape[1]
        if noise.dim() == 0:
            grad_rows = grad_out.sum(1)  # (N, E): the row each image's positions share
        else:
            grad_rows = grad_out.reshape(N * S, E)
        grad_W_proj = _mm(grad_rows.T, context) if needs[9] else None
        grad_b_proj = grad_rows.sum(0) if needs[10] else None
        grad_value = grad_W_value = grad_b_value = None
        if needs[2] or needs[7] or needs[8]:
            grad_context = _mm(grad_rows, W_proj)  # (N or N * S, E)
            if noise.dim() == 0:
                grad_V = grad_context.mul_(noise)  # (N, E)
            else:  # sum over the positions of noise * gradient, per head
                grad_V = _merge_heads((_split_heads(grad_context.view(N, S, E), heads) * noise).sum(2, keepdim=True))
            grad_value = _mm(grad_V, W_value).view(value.shape) if needs[2] else None
            grad_W_value = _mm(grad_V.T, value.reshape(N, E)) if needs[7] else None
            grad_b_value = grad_V.sum(0) if needs[8] else None

        def zeros(tensor, need):
            return torch.zeros_like(tensor) if need else None

        return (zeros(query, needs[0]), zeros(key, needs[1]), grad_value, zeros(W_query, needs[3]),
                zeros(W_query[0], needs[4]), zeros(W_key, needs[5]), zeros(W_key[0], needs[6]), grad_W_value,
                grad_b_value, grad_W_proj, grad_b_proj, None, None)  # fmt: skip


def multi_head_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    W_query: Tensor,
    b_query: Tensor,
    W_key: Tensor,
    b_key: Tensor,
    W_value: Tensor,
    b_value: Tensor,
    W_proj: Tensor,
    b_proj: Tensor,
    num_heads: int,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = True,
) -> Tensor:
    """Multi-head scaled dot-product attention, as cs231n's ``MultiHeadAttention.forward``.

    Args:
        query: (N, S, E) the positions that attend.
        key, value: (N, T, E) the positions attended to.
        W_query, W_key, W_value, W_proj: (E, E) weights, ``nn.Linear``'s (out, in) layout.
        b_query, b_key, b_value, b_proj: (E,) biases.
        num_heads: H, dividing E; scores are scaled by 1 / sqrt(E / H).
        attn_mask: optional (S, T) mask, 1 (or True) where a query may attend to a key; a
            query row must allow at least one key. None lets every query attend everywhere.
        dropout_p: probability of dropping an attention weight (drawn as :func:`dropout` draws,
            over the (N, H, S, T) weights).
        training: False turns the dropout off.

    Returns:
        (N, S, E) attended outputs.
    """
    _check_float("query", query, 3)
    _check_float("key", key, 3)
    _check_float("value", value, 3)
    check_positive_integer("num_heads", num_heads)
    N, S, E = query.shape
    if E % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the embed width {E} of query")
    T = key.shape[1]
    if T == 0:
        raise ValueError(f"key holds T = 0 positions (shape {tuple(key.shape)}); a query must have a key to attend to")
    _check_dim("key", key, 0, N, "the batch size of query")
    _check_dim("key", key, 2, E, "the embed width of query")
    if value.shape != key.shape:
        raise ValueError(f"value has shape {tuple(value.shape)} but key has {tuple(key.shape)}")
    named = {"W_query": W_query, "b_query": b_query, "W_key": W_key, "b_key": b_key, "W_value": W_value,
             "b_value": b_value, "W_proj": W_proj, "b_proj": b_proj}  # fmt: skip
    for name, tensor in named.items():
        expected = (E, E) if name.startswith("W") else (E,)
        _check_float(name, tensor, len(expected))
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for the embed width of query, got {tuple(tensor.shape)}"
            )
    _check_same_dtype(query=query, key=key, value=value, **named)
    check_probability("dropout_p", dropout_p)
    if attn_mask is None:
        allowed = torch.ones((), dtype=torch.bool, device=query.device)
    else:
        if not isinstance(attn_mask, Tensor) or tuple(attn_mask.shape) != (S, T):
            shape = tuple(attn_mask.shape) if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
            raise ValueError(f"attn_mask must be an (S, T) = {(S, T)} tensor, got {shape}")
        # Both checks read the (S, T) mask on the host: one small copy from an accelerator, not one sync each.
        # An additive mask (0 and -inf) would otherwise be read inverted; a row allowing no key gives NaN.
        on_host = attn_mask.detach().cpu()
        if on_host.dtype != torch.bool and bool(((on_host != 0) & (on_host != 1)).any()):
            raise ValueError("attn_mask must hold only 0 and 1 (or be bool): 1 where a query may attend to a key")
        blocked_rows = (~(on_host != 0).any(1)).nonzero()
        if len(blocked_rows):
            raise ValueError(f"attn_mask row {int(blocked_rows[0])} allows no key: every query must attend to one")
        allowed = attn_mask != 0
    scores_like = torch.empty((N, num_heads, S, T), dtype=query.dtype, device=query.device) if training else query
    if drops(dropout_p, training, scores_like):
        noise = dropout_noise(scores_like, dropout_p)
    else:  # a scalar: 1 keeps every weight, 0 drops them all (p = 1)
        noise = torch.tensor(0.0 if training and dropout_p == 1 else 1.0, dtype=query.dtype, device=query.device)
    if T == 1 and attn_mask is None:
        return _apply_autocast(SingleKeyAttention, query, key, value, *named.values(), noise, num_heads,
                               low_precision=True)[0]  # fmt: skip
    return _apply_autocast(MultiHeadAttention, query, key, value, *named.values(), allowed, noise, num_heads,
                           low_precision=True)[0]  # fmt: skip


# --------------------------------------------------------------------------- #
# Generation: attention over cached keys and values
# --------------------------------------------------------------------------- #
# A causal decoder's keys and values at earlier positions never change, so generation
# projects each position's once and keeps them; a step then projects only its own query.


def attention_heads(x: Tensor, weight: Tensor, bias: Tensor, num_heads: int) -> Tensor:
    """Project and split into heads: (N, L, E) -> (N, H, L, E / H), the keys or values attention would use.

    Args:
        x: (N, L, E) inputs.
        weight: (E, E) projection (``nn.Linear``'s layout), bias: (E,).
        num_heads: H, dividing E.
    """
    from caption_torch.functional.layers import (
        linear,  # layers imports nothing from here; the import is local to keep the files apart
    )

    _check_float("x", x, 3)
    check_positive_integer("num_heads", num_heads)
    if x.shape[2] % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the width {x.shape[2]} of x")
    return _split_heads(linear(x, weight, bias), num_heads)


def cached_attention(
    query: Tensor, keys: Tensor, values: Tensor, W_query: Tensor, b_query: Tensor, W_proj: Tensor, b_proj: Tensor
) -> Tensor:
    """:func:`multi_head_attention` without dropout, for keys and values projected beforehand (generation only).

    Every key may be attended to (a causal cache holds only earlier positions). No gradient:
    call it under ``torch.no_grad()``.

    Args:
        query: (N, S, E) the positions that attend.
        keys, values: (N, H, T, E / H) from :func:`attention_heads`.
        W_query, W_proj: (E, E), b_query, b_proj: (E,) as :func:`multi_head_attention`.

    Returns:
        (N, S, E), equal to ``multi_head_attention`` of the unprojected keys and values.
    """
    _check_float("query", query, 3)
    _check_float("keys", keys, 4)
    _check_float("values", values, 4)
    N, S, E = query.shape
    H = keys.shape[1]
    if keys.shape[0] != N or keys.shape[1] * keys.shape[3] != E or values.shape != keys.shape:
        raise ValueError(f"keys and values must be (N, H, T, E / H) for query {tuple(query.shape)}, "
                         f"got {tuple(keys.shape)} and {tuple(values.shape)}")  # fmt: skip
    for name, tensor in {"W_query": W_query, "b_query": b_query, "W_proj": W_proj, "b_proj": b_proj}.items():
        expected = (E, E) if name.startswith("W") else (E,)
        _check_float(name, tensor, len(expected))
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for the embed width of query, got {tuple(tensor.shape)}"
            )
    inputs = (query, keys, values, W_query, b_query, W_proj, b_proj)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        raise ValueError("cached_attention is for generation and has no backward: call it under torch.no_grad()")
    Q = _split_heads(_project(query, W_query, b_query), H)  # (N, H, S, d)
    _, _, context = _attend(Q, keys, values, noise=None)  # (N, H, S, d)
    context = _merge_heads(context)  # (N * S, E)
    return _addmm(b_proj, context, W_proj.T).view(N, S, E)
