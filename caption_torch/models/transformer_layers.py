"""cs231n's Transformer layers (its ``transformer_layers.py``), computed by ``functional``.

Modules, parameter names, shapes ((out, in) for every linear map) and the order in which
construction draws from torch's default generator are cs231n's, so a state dict of its
layers loads here. The dropouts draw their masks from torch's generator, or the Intel-MKL way inside
:func:`caption_torch.functional.mkl_dropout`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from caption_torch import functional as F
from caption_torch.functional import check_positive_integer
from caption_torch.functional.dropout import check_probability

# --------------------------------------------------------------------------- #
# Parameter holders: cs231n's nn.Linear / nn.Embedding / nn.LayerNorm, computed by functional
# --------------------------------------------------------------------------- #


class Linear(nn.Module):
    """``x @ weight.T + bias`` with ``nn.Linear``'s parameters and default initialisation.

    Initialisation draws from torch's default generator exactly as ``nn.Linear(in, out)`` does.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # uniform(-1/sqrt(in), 1/sqrt(in)), as nn.Linear
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out)."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


class Embedding(nn.Module):
    """A (V, W) table of word vectors, initialised as ``nn.Embedding(V, W, padding_idx)`` (N(0, 1), padding row 0)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        nn.init.normal_(self.weight)
        with torch.no_grad():
            self.weight[padding_idx].fill_(0)
        self.padding_idx = padding_idx

    def forward(self, ids: Tensor) -> Tensor:
        """(N, T) ids -> (N, T, W)."""
        return F.word_embedding(ids, self.weight)


class LayerNorm(nn.Module):
    """``nn.LayerNorm(width)``: weight 1, bias 0, eps 1e-5."""

    def __init__(self, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(..., width) -> (..., width)."""
        return F.layer_norm(x, self.weight, self.bias, self.eps)


# --------------------------------------------------------------------------- #
# cs231n's transformer_layers.py
# --------------------------------------------------------------------------- #


class MultiHeadAttention(nn.Module):
    """Multi-head attention with dropout on the attention weights (cs231n's ``MultiHeadAttention``).

    Args:
        embed_dim: E, the width of queries, keys, values and the output.
        num_heads: H, dividing E; each head has width E / H and scores are scaled by 1 / sqrt(E / H).
        dropout: probability of dropping an attention weight while training.

    Parameters ``key``, ``query``, ``value``, ``proj``: (E, E) linear maps with bias, created in that order.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        check_positive_integer("embed_dim", embed_dim)
        check_positive_integer("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        check_probability("dropout", dropout)
        self.key = Linear(embed_dim, embed_dim)
        self.query = Linear(embed_dim, embed_dim)
        self.value = Linear(embed_dim, embed_dim)
        self.proj = Linear(embed_dim, embed_dim)
        self.dropout = dropout
        self.num_heads = num_heads
        self.embed_dim = embed_dim

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Attend from each query position to the key/value positions.

        Args:
            query: (N, S, E).
            key, value: (N, T, E).
            attn_mask: optional (S, T), 1 where query position s may attend to key position t.

        Returns:
            (N, S, E).
        """
        return F.multi_head_attention(
            query, key, value,
            self.query.weight, self.query.bias, self.key.weight, self.key.bias,
            self.value.weight, self.value.bias, self.proj.weight, self.proj.bias,
            self.num_heads, attn_mask, self.dropout, self.training,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


class PositionalEncoding(nn.Module):
    """Add sinusoidal position encodings, then dropout (cs231n's ``PositionalEncoding``).

    Args:
        embed_dim: E, even.
        dropout: dropout probability after the sum, while training.
        max_len: the most positions a sequence may have.

    Buffer ``pe`` (1, max_len, E): ``pe[0, i, 2j] = sin(i * 10000^(-2j/E))``, ``pe[0, i, 2j+1] = cos(...)``.
    """

    def __init__(self, embed_dim: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        check_positive_integer("embed_dim", embed_dim)
        check_positive_integer("max_len", max_len)
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sine and cosine pairs), got {embed_dim}")
        check_probability("dropout", dropout)
        self.dropout = dropout
        self.register_buffer("pe", F.sinusoidal_positions(max_len, embed_dim)[None])

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, E) with T <= max_len -> (N, T, E)."""
        return F.add_positions(x, self.pe[0], self.dropout, self.training)


class TransformerDecoderLayer(nn.Module):
    """One post-norm decoder layer (see the module docstring), cs231n's ``TransformerDecoderLayer``.

    Args:
        input_dim: W, the width of the sequence and of the memory.
        num_heads: attention heads, dividing W.
        dim_feedforward: hidden width of the feed-forward block.
        dropout: every dropout's probability (attention weights, residual branches, feed-forward).
    """

    def __init__(self, input_dim: int, num_heads: int, dim_feedforward: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(input_dim, num_heads, dropout)
        self.multihead_attn = MultiHeadAttention(input_dim, num_heads, dropout)
        self.linear1 = Linear(input_dim, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, input_dim)
        self.norm1 = LayerNorm(input_dim)
        self.norm2 = LayerNorm(input_dim)
        self.norm3 = LayerNorm(input_dim)
        self.dropout = dropout

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """(N, T, W) sequence, (N, M, W) memory, optional (T, T) mask -> (N, T, W)."""
        p, training = self.dropout, self.training
        attended = self.self_attn(tgt, tgt, tgt, attn_mask=tgt_mask)
        tgt = self.norm1(tgt + F.dropout(attended, p, training))
        attended = self.multihead_attn(tgt, memory, memory)
        tgt = self.norm2(tgt + F.dropout(attended, p, training))
        transformed = F.feed_forward(
            tgt, self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias, p, training
        )
        return self.norm3(tgt + F.dropout(transformed, p, training))

    def forward_packed(self, rows: Tensor, memory: Tensor, packing: F.CausalPacking) -> Tensor:
        """:meth:`forward` with the causal mask on packed rows (P, W) of the computed positions -> (P, W).

        The same values as the computed rows of :meth:`forward`, dropout masks included.
        """
        p, training = self.dropout, self.training
        attention = self.self_attn
        attended = F.packed_self_attention(
            rows, attention.query.weight, attention.query.bias, attention.key.weight, attention.key.bias,
            attention.value.weight, attention.value.bias, attention.proj.weight, attention.proj.bias,
            attention.num_heads, packing, attention.dropout, training,
        )  # fmt: skip
        rows = self.norm1(rows + F.packed_dropout(attended, packing, p, training))
        attention = self.multihead_attn
        attended = F.packed_memory_attention(
            rows, memory, attention.query.weight, attention.query.bias, attention.key.weight, attention.key.bias,
            attention.value.weight, attention.value.bias, attention.proj.weight, attention.proj.bias,
            attention.num_heads, packing, attention.dropout, training,
        )  # fmt: skip
        rows = self.norm2(rows + F.packed_dropout(attended, packing, p, training))
        transformed = F.packed_feed_forward(rows, self.linear1.weight, self.linear1.bias, self.linear2.weight,
                                            self.linear2.bias, packing, p, training)  # fmt: skip
        return self.norm3(rows + F.packed_dropout(transformed, packing, p, training))


class TransformerDecoder(nn.Module):
    """``num_layers`` copies of one decoder layer, applied in turn (each copy starts from the same values)."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int) -> None:
        super().__init__()
        check_positive_integer("num_layers", num_layers)
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """(N, T, W), (N, M, W), optional (T, T) -> (N, T, W)."""
        for layer in self.layers:
            tgt = layer(tgt, memory, tgt_mask=tgt_mask)
        return tgt
