"""cs231n's Transformer layers (its ``transformer_layers.py``), computed by ``functional``.

Modules, parameter names, shapes ((out, in) for every linear map) and the order in which
construction draws from torch's default generator are cs231n's, so a state dict of its
layers loads here. The dropouts draw their masks from torch's generator, or the Intel-MKL way inside
:func:`caption_torch.functional.mkl_dropout`.

The course has taught two decoder layers, both post-norm (``cs231n_version`` picks one):

    2021 (2021-2024): self_attn, multihead_attn, linear1, linear2, norm1, norm2, norm3
        x = norm1(x + dropout(self_attn(x, x, x, mask)))
        x = norm2(x + dropout(multihead_attn(x, memory, memory)))
        x = norm3(x + dropout(linear2(dropout(relu(linear1(x))))))
    2025 (2025-2026): self_attn, cross_attn, ffn (fc1, fc2), norm_self, norm_cross, norm_ffn,
                      dropout_self, dropout_cross, dropout_ffn
        x = norm_self(x + dropout_self(self_attn(x, x, x, mask)))
        x = norm_cross(x + dropout_cross(cross_attn(x, memory, memory)))
        x = norm_ffn(x + dropout_ffn(ffn(x))),   ffn(x) = fc2(dropout(gelu(fc1(x)))), GELU exact
"""

from __future__ import annotations

import copy
import math
import numbers

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


class Dropout(nn.Module):
    """``nn.Dropout(p)``: zero each element with probability p while training, scale the rest by 1 / (1 - p)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        check_probability("p", p)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Any shape -> the same shape."""
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------- #
# cs231n's transformer_layers.py
# --------------------------------------------------------------------------- #

# Each decoder layer cs231n has taught, by the year it was introduced, and the years that taught it.
CS231N_VERSIONS: dict[int, str] = {
    2021: "cs231n 2021-2024's layer (ReLU feed-forward; linear1/linear2, norm1-3)",
    2025: "cs231n 2025-2026's layer (GELU feed-forward; ffn.fc1/fc2, norm_self/cross/ffn)",
}


def check_cs231n_version(cs231n_version: int) -> None:
    """A decoder layer's version must be one of :data:`CS231N_VERSIONS`."""
    # An integer, as check_positive_integer takes them: a bool or a float such as 2025.0 equals a key too.
    integral = isinstance(cs231n_version, numbers.Integral) and not isinstance(cs231n_version, bool)
    if not integral or cs231n_version not in CS231N_VERSIONS:
        raise ValueError(f"cs231n_version must be one of {tuple(CS231N_VERSIONS)}, got {cs231n_version!r}")


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
        return F.multi_head_attention(query, key, value, *self.maps(), self.num_heads, attn_mask, self.dropout,
                                      self.training)  # fmt: skip

    def maps(self) -> tuple[Tensor, ...]:
        """The eight weights and biases in :func:`caption_torch.functional.multi_head_attention`'s order."""
        return tuple(
            t for linear in (self.query, self.key, self.value, self.proj) for t in (linear.weight, linear.bias)
        )

    def forward_packed(self, rows: Tensor, memory: Tensor | None, packing: F.CausalPacking) -> Tensor:
        """The computed rows of :meth:`forward` for packed rows (P, E): causal self-attention (``memory`` None)
        or attention to each caption's (N, M, E) memory; see :func:`caption_torch.functional.packed_attention`."""
        return F.packed_attention(rows, memory, self.maps(), self.num_heads, packing, self.dropout, self.training)

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


class FeedForwardNetwork(nn.Module):
    """cs231n 2025-2026's position-wise block: ``fc2(dropout(gelu(fc1(x))))``, GELU in its exact form.

    Args:
        embed_dim: W, the width of the input and the output.
        ffn_dim: F, the hidden width.
        dropout: probability of dropping a hidden unit while training.

    Modules ``fc1`` (W -> F), ``fc2`` (F -> W) and ``dropout``, created in that order.
    """

    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        check_positive_integer("embed_dim", embed_dim)
        check_positive_integer("ffn_dim", ffn_dim)
        self.fc1 = Linear(embed_dim, ffn_dim)
        self.fc2 = Linear(ffn_dim, embed_dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, packing: F.CausalPacking | None = None, training: bool | None = None) -> Tensor:
        """(..., W) -> (..., W); with ``packing``, x holds the packed rows (P, W) of its computed positions.

        ``training`` overrides the module's mode for the dropout (generation runs it off).
        """
        weights = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        training = self.training if training is None else training
        return F.feed_forward(x, *weights, self.dropout.p, training, activation="gelu", packing=packing)


class TransformerDecoderLayer(nn.Module):
    """One post-norm decoder layer (see the module docstring), cs231n's ``TransformerDecoderLayer``.

    Args:
        input_dim: W, the width of the sequence and of the memory.
        num_heads: attention heads, dividing W.
        dim_feedforward: hidden width of the feed-forward block.
        dropout: every dropout's probability (attention weights, residual branches, feed-forward).
        cs231n_version: 2021 for the layer cs231n taught in 2021-2024, 2025 for 2025-2026's (module
            docstring): each creates its year's modules, under its names, in its order.

    Whatever the version, :attr:`cross_attention`, :attr:`norms`, :attr:`residual_dropouts` and
    :meth:`feed_forward` name the layer's parts by role.
    """

    def __init__(
        self,
        input_dim: int,
        num_heads: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        cs231n_version: int = 2021,
    ) -> None:
        super().__init__()
        check_cs231n_version(cs231n_version)
        self.cs231n_version = cs231n_version
        self.self_attn = MultiHeadAttention(input_dim, num_heads, dropout)
        if cs231n_version == 2021:
            self.multihead_attn = MultiHeadAttention(input_dim, num_heads, dropout)
            self.linear1 = Linear(input_dim, dim_feedforward)
            self.linear2 = Linear(dim_feedforward, input_dim)
            self.norm1 = LayerNorm(input_dim)
            self.norm2 = LayerNorm(input_dim)
            self.norm3 = LayerNorm(input_dim)
            self.dropout = dropout
        else:
            self.cross_attn = MultiHeadAttention(input_dim, num_heads, dropout)
            self.ffn = FeedForwardNetwork(input_dim, dim_feedforward, dropout)
            self.norm_self = LayerNorm(input_dim)
            self.norm_cross = LayerNorm(input_dim)
            self.norm_ffn = LayerNorm(input_dim)
            self.dropout_self = Dropout(dropout)
            self.dropout_cross = Dropout(dropout)
            self.dropout_ffn = Dropout(dropout)

    @property
    def cross_attention(self) -> MultiHeadAttention:
        """The attention to the memory (``multihead_attn`` in 2021, ``cross_attn`` in 2025)."""
        return self.multihead_attn if self.cs231n_version == 2021 else self.cross_attn

    @property
    def norms(self) -> tuple[LayerNorm, LayerNorm, LayerNorm]:
        """The layer norms after self-attention, cross-attention and the feed-forward block."""
        if self.cs231n_version == 2021:
            return self.norm1, self.norm2, self.norm3
        return self.norm_self, self.norm_cross, self.norm_ffn

    @property
    def residual_dropouts(self) -> tuple[float, float, float]:
        """The dropout probabilities of the three residual branches, in the order of :attr:`norms`."""
        if self.cs231n_version == 2021:
            return self.dropout, self.dropout, self.dropout
        return self.dropout_self.p, self.dropout_cross.p, self.dropout_ffn.p

    def feed_forward(self, x: Tensor, packing: F.CausalPacking | None = None, training: bool | None = None) -> Tensor:
        """The feed-forward block of (..., W) inputs, or of packed rows (P, W) with their ``packing``.

        ``training`` overrides the layer's mode for its dropout (generation runs it off).
        """
        if self.cs231n_version == 2025:
            return self.ffn(x, packing, training)
        training = self.training if training is None else training
        weights = (self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias)
        return F.feed_forward(x, *weights, self.dropout, training, packing=packing)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """(N, T, W) sequence, (N, M, W) memory, optional (T, T) mask -> (N, T, W)."""
        training = self.training
        (norm_self, norm_cross, norm_ffn), (p_self, p_cross, p_ffn) = self.norms, self.residual_dropouts
        attended = self.self_attn(tgt, tgt, tgt, attn_mask=tgt_mask)
        tgt = norm_self(tgt + F.dropout(attended, p_self, training))
        attended = self.cross_attention(tgt, memory, memory)
        tgt = norm_cross(tgt + F.dropout(attended, p_cross, training))
        return norm_ffn(tgt + F.dropout(self.feed_forward(tgt), p_ffn, training))

    def forward_packed(self, rows: Tensor, memory: Tensor, packing: F.CausalPacking) -> Tensor:
        """:meth:`forward` with the causal mask on packed rows (P, W) of the computed positions -> (P, W).

        The same values as the computed rows of :meth:`forward`, dropout masks included.
        """
        training = self.training
        (norm_self, norm_cross, norm_ffn), (p_self, p_cross, p_ffn) = self.norms, self.residual_dropouts
        attended = self.self_attn.forward_packed(rows, None, packing)
        rows = norm_self(rows + F.packed_dropout(attended, packing, p_self, training))
        attended = self.cross_attention.forward_packed(rows, memory, packing)
        rows = norm_cross(rows + F.packed_dropout(attended, packing, p_cross, training))
        return norm_ffn(rows + F.packed_dropout(self.feed_forward(rows, packing), packing, p_ffn, training))

    def extra_repr(self) -> str:
        return f"cs231n_version={self.cs231n_version}"


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
