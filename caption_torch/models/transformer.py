"""CaptioningTransformer: cs231n's Transformer captioner, built only from ``functional``.

    features (N, M, D) ──visual_projection──► memory (N, M, W)     ((N, D) features: M = 1)
    captions_in (N, T) ──embedding──► (N, T, W) ──+ sinusoidal positions, dropout──► x (N, T, W)
    x ──num_layers decoder layers (causal self-attention, attention to memory)──► (N, T, W)
      ──output──► scores (N, T, V)

Each decoder layer is post-norm, as cs231n's ``TransformerDecoderLayer`` of 2021-2024::

    x = norm1(x + dropout(self_attn(x, x, x, causal mask)))
    x = norm2(x + dropout(multihead_attn(x, memory, memory)))
    x = norm3(x + dropout(linear2(dropout(relu(linear1(x))))))

With ``cs231n_version=2025`` the layers are cs231n's of 2025-2026: the same with a GELU
feed-forward block under that year's module names (``transformer_layers.py``). Every decoder
layer attends to the M memory vectors of its caption's image (M = 1 for cs231n's fc7 vector,
where the one key's weight is 1 and no scores are computed). The layers live in
``transformer_layers.py``; the decoder contract is
:class:`~caption_torch.models.captioner.Captioner`'s. Modules, parameter names, shapes ((out, in)
for every linear map) and the order in which construction draws from torch's default
generator are cs231n's, so a state dict of its model loads here and its notebook's checks
run unchanged. The dropouts draw their masks from torch's generator (see
functional/dropout.py), or the Intel-MKL way inside
:func:`caption_torch.functional.mkl_dropout`.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from caption_torch import functional as F
from caption_torch.functional import check_positive_integer
from caption_torch.models.captioner import Captioner
from caption_torch.models.config import MAX_LENGTH
from caption_torch.models.transformer_layers import (
    Embedding,
    FeedForwardNetwork,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    PositionalEncoding,
    TransformerDecoder,
    TransformerDecoderLayer,
)

__all__ = [
    "CaptioningTransformer",
    "FeedForwardNetwork",
    "MultiHeadAttention",
    "PositionalEncoding",
    "TransformerDecoderLayer",
    "TransformerDecoder",
]

# --------------------------------------------------------------------------- #
# The captioner
# --------------------------------------------------------------------------- #


def _counted_lengths(mask: Tensor) -> Tensor:
    """(N,) one past the last True of each row of an (N, T) mask (0 for a row without one): the positions a
    causal model must compute for that row's counted words."""
    return (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).amax(1)


class CaptioningTransformer(Captioner):
    """cs231n's Transformer image captioner over pre-extracted image features.

    Args:
        word_to_idx: vocabulary, word -> id (as ``CaptioningRNN``'s); must contain ``<NULL>``; sampling also
            needs ``<START>`` and ``<END>``.
        input_dim: D, the width of an image feature vector (features (N, D), or (N, M, D) for M per image).
        wordvec_dim: W, the width of word vectors and of every layer.
        num_heads: attention heads, dividing W.
        num_layers: decoder layers.
        max_length: the most words a caption fed to the model may have (the positional table's length).
        cs231n_version: which year's decoder layer: 2021 (cs231n 2021-2024, ReLU) or 2025 (2025-2026, GELU).

    Construction draws from torch's default generator as cs231n's model does: each module's
    default initialisation in module order (visual_projection, embedding, one decoder layer,
    copied num_layers times), then every linear and embedding weight of those re-drawn from
    N(0, 0.02) in module order with biases 0 and layer norms 1 and 0, then the ``output``
    map with its default initialisation. ``parameters()`` follow that module order.
    """

    def __init__(
        self,
        word_to_idx: Mapping[str, int],
        input_dim: int,
        wordvec_dim: int,
        num_heads: int = 4,
        num_layers: int = 2,
        max_length: int = 50,
        cs231n_version: int = 2021,
    ) -> None:
        super().__init__(word_to_idx, input_dim)
        for name, value in (("wordvec_dim", wordvec_dim), ("max_length", max_length)):
            check_positive_integer(name, value)
        self.wordvec_dim, self.max_length = wordvec_dim, max_length
        self.num_heads, self.num_layers, self.cs231n_version = num_heads, num_layers, cs231n_version

        self.visual_projection = Linear(input_dim, wordvec_dim)
        self.embedding = Embedding(self.vocab_size, wordvec_dim, padding_idx=self.null_id)
        self.positional_encoding = PositionalEncoding(wordvec_dim, max_len=max_length)
        decoder_layer = TransformerDecoderLayer(input_dim=wordvec_dim, num_heads=num_heads,
                                                cs231n_version=cs231n_version)  # fmt: skip
        self.transformer = TransformerDecoder(decoder_layer, num_layers=num_layers)
        self.apply(self._init_weights)
        self.output = Linear(wordvec_dim, self.vocab_size)  # after the re-draw: keeps its default initialisation

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-style initialisation, as cs231n's: linear and embedding weights N(0, 0.02), biases 0, norms 1 and 0."""
        if isinstance(module, (Linear, Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, Linear):
                module.bias.data.zero_()
        elif isinstance(module, LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    # ------------------------------------------------------------------ #
    # Training
    # ------------------------------------------------------------------ #

    def forward(self, features: Tensor, captions: Tensor) -> Tensor:
        """Scores of the next word at every position.

        Args:
            features: (N, D) or (N, M, D) image features.
            captions: (N, T) input token ids, T <= max_length (``<START> w1 w2 ...``).

        Returns:
            (N, T, V) scores: position t scores the word after captions[:, :t + 1].
        """
        return self.output(self._decode(features, captions))  # (N, T, V)

    def memory(self, features: Tensor) -> Tensor:
        """What every decoder layer attends to: the projected features, (N, M, W) for (N, M, D) ((N, D): M = 1)."""
        return self.visual_projection(self.as_memory(features))

    def _decode(self, features: Tensor, captions: Tensor) -> Tensor:
        """The last decoder layer's output (N, T, W) for features (N, [M,] D) and input words (N, T)."""
        self._check_captions(features, captions)
        T = captions.shape[1]
        words = self.positional_encoding(self.embedding(captions))  # (N, T, W)
        memory = self.memory(features)  # (N, M, W)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=captions.device))  # 1: may attend
        return self.transformer(words, memory, causal)  # (N, T, W)

    def _check_captions(self, features: Tensor, captions: Tensor) -> None:
        """features (N, [M,] D) and input words (N, T) with 1 <= T <= max_length."""
        self.check_features(features)
        if not isinstance(captions, Tensor) or captions.dim() != 2 or captions.shape[0] != features.shape[0]:
            shape = tuple(captions.shape) if isinstance(captions, Tensor) else type(captions).__name__
            raise ValueError(f"captions must be an (N, T) tensor with N = {features.shape[0]} as features, got {shape}")
        T = captions.shape[1]
        if not 1 <= T <= self.max_length:
            raise ValueError(f"captions have T = {T} words; the model takes 1 to max_length = {self.max_length}")

    def loss(self, features: Tensor, captions: Tensor) -> Tensor:
        """Training loss of a minibatch, as cs231n's Transformer solver computes it.

        Args:
            features: (N, D) or (N, M, D) image features.
            captions: (N, T + 1) token ids ``<START> ... <END> <NULL>...``; ``captions[:, :-1]`` is
                fed in and ``captions[:, 1:]`` predicted.

        Returns:
            Scalar: the cross-entropy of the positions whose target is not ``<NULL>``, summed and
            divided by N * T.
        """
        if not isinstance(captions, Tensor) or captions.dim() != 2 or captions.shape[1] < 2:
            shape = tuple(captions.shape) if isinstance(captions, Tensor) else type(captions).__name__
            raise ValueError(f"captions must be an (N, T+1) tensor with T+1 >= 2, got {shape}")
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        self._check_captions(features, captions_in)
        N, T = captions_out.shape
        mask = captions_out != self.null_id
        # Attention is causal: positions after a caption's last scored word affect no score, so only
        # each caption's prefix up to it is computed, as packed rows (functional/packing.py).
        lengths = _counted_lengths(mask)
        if not bool(lengths.any()):  # nothing is scored: the loss is 0, with zero gradients
            hidden = self._decode(features, captions_in)
            return F.vocab_softmax_loss(hidden, self.output.weight.T, self.output.bias, captions_out, mask) / T
        rows, packing = self._decode_packed(features, captions_in, lengths)
        # = transformer_softmax_loss(self.output(hidden), ...): the fused loss scores only the positions
        # that count and divides by its N, here 1; the mean is over N * T.
        targets, scored = captions_out[packing.computed][None], mask[packing.computed][None]  # (1, P)
        loss = F.vocab_softmax_loss(rows[None], self.output.weight.T, self.output.bias, targets, scored)
        return loss / (N * T)

    def _decode_packed(self, features: Tensor, captions: Tensor, lengths: Tensor) -> tuple[Tensor, F.CausalPacking]:
        """The last decoder layer's output for each caption's first ``lengths[n]`` positions only.

        Args:
            features: (N, [M,] D); captions: (N, T) input words; lengths: (N,) positions to compute per caption.

        Returns:
            rows (P, W), P = lengths.sum(), in (caption, position) order, and the packing that placed them.
        """
        packing = F.causal_packing(lengths, captions.shape[1])
        rows = F.pack_rows(self.positional_encoding(self.embedding(captions)), packing)  # (P, W)
        memory = self.memory(features)  # (N, M, W)
        for layer in self.transformer.layers:
            rows = layer.forward_packed(rows, memory, packing)
        return rows, packing

    def weighted_loss(self, features: Tensor, captions: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        """``-sum weights * mask * log p(word) / N`` (the contract's ``weighted_loss``): the decoder's output
        over the captions' words, scored through the output map.

        Args:
            features: (N, [M,] D); captions: (N, T + 1) fed ``[:, :-1]`` and scored on ``[:, 1:]``.
            mask: (N, T) bool, the words that count; weights: (N,) per caption or (N, T) per word.

        As in :meth:`loss`, each caption runs only up to its last counted word (packed rows), which
        carry their weights."""
        if not isinstance(captions, Tensor) or captions.dim() != 2 or captions.shape[1] < 2:
            shape = tuple(captions.shape) if isinstance(captions, Tensor) else type(captions).__name__
            raise ValueError(f"captions must be an (N, T+1) tensor with T+1 >= 2, got {shape}")
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        self._check_captions(features, captions_in)
        self.check_weights(mask, weights)
        N, T = captions_out.shape
        lengths = _counted_lengths(mask)
        W_vocab, b_vocab = self.output.weight.T, self.output.bias
        if not bool(lengths.any()):  # no caption (every caption counts its first word): nothing to pack
            return F.policy_gradient_loss(self._decode(features, captions_in), W_vocab, b_vocab, captions_out, mask,
                                          weights)  # fmt: skip
        rows, packing = self._decode_packed(features, captions_in, lengths)
        computed = packing.computed
        per_word = weights[:, None].expand(N, T) if weights.dim() == 1 else weights  # (N, T)
        row_weights = per_word[computed][None]  # (1, P): each packed word its weight
        loss = F.policy_gradient_loss(rows[None], W_vocab, b_vocab, captions_out[computed][None], mask[computed][None],
                                      row_weights)  # fmt: skip
        return loss / N  # the fused loss divided by its N, here 1

    # ------------------------------------------------------------------ #
    # Generation
    # ------------------------------------------------------------------ #

    # Generation keeps, per layer, the self-attention keys and values of every position fed so
    # far, and the keys and values of the memory: a step projects only its own word. The state
    # is a tuple of tensors whose first dimension is the batch, so a decoder can select, drop
    # or repeat rows of it as it does the recurrent models' (h, c):
    #
    #   positions      (N,)                     the position the next word takes (equal in every row)
    #   keys, values   (N, layers, H, L, W/H)   self-attention cache, filled up to positions; L = max_length
    #   memory_keys, memory_values (N, layers, H, M, W/H)

    @torch.no_grad()
    def initial_state(self, features: Tensor) -> tuple[Tensor, ...]:
        """The generation state before the first word (see above), for (N, D) or (N, M, D) features."""
        self.check_features(features)
        N, W = features.shape[0], self.wordvec_dim
        layers = self.transformer.layers
        heads = self.num_heads
        memory = self.memory(features)  # (N, M, W)
        cross = [layer.cross_attention for layer in layers]
        memory_keys = torch.stack([F.attention_heads(memory, a.key.weight, a.key.bias, heads) for a in cross], 1)
        memory_values = torch.stack([F.attention_heads(memory, a.value.weight, a.value.bias, heads) for a in cross], 1)
        cache_shape = (N, len(layers), heads, self.max_length, W // heads)
        keys = memory.new_zeros(cache_shape)
        positions = torch.zeros(N, dtype=torch.long, device=features.device)
        return positions, keys, torch.zeros_like(keys), memory_keys, memory_values

    @torch.no_grad()
    def step(self, words: Tensor, state: tuple[Tensor, ...], context: None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Feed one word per sequence, every dropout off.

        Args:
            words: (N,) token ids of the current words (``<START>`` first).
            state: from :meth:`initial_state` or the previous step. Its caches are written in
                place at the new position, which no earlier state reads.
            context: unused (the Transformer reuses nothing across a generation run but its state).

        Returns:
            ``(scores, state)``: (N, V) scores of the next word, and the state after this word.
        """
        positions, keys, values, memory_keys, memory_values = state
        t = int(positions[0]) if positions.numel() else 0
        if t >= self.max_length:
            raise ValueError(f"a caption may have at most max_length = {self.max_length} words fed in")
        encoding = self.positional_encoding.pe[0, t : t + 1]  # (1, W): this position's row
        x = F.add_positions(self.embedding(words[:, None]), encoding, 0.0, training=False)  # (N, 1, W)
        for i, layer in enumerate(self.transformer.layers):
            attention, heads = layer.self_attn, layer.self_attn.num_heads
            keys[:, i, :, t] = F.attention_heads(x, attention.key.weight, attention.key.bias, heads)[:, :, 0]
            values[:, i, :, t] = F.attention_heads(x, attention.value.weight, attention.value.bias, heads)[:, :, 0]
            attended = F.cached_attention(x, keys[:, i, :, : t + 1], values[:, i, :, : t + 1], attention.query.weight,
                                          attention.query.bias, attention.proj.weight, attention.proj.bias)  # fmt: skip
            norm_self, norm_cross, norm_ffn = layer.norms
            x = norm_self(x + attended)
            attention = layer.cross_attention
            attended = F.cached_attention(x, memory_keys[:, i], memory_values[:, i], attention.query.weight,
                                          attention.query.bias, attention.proj.weight, attention.proj.bias)  # fmt: skip
            x = norm_cross(x + attended)
            x = norm_ffn(x + layer.feed_forward(x, training=False))
        scores = self.output(x)[:, 0]  # (N, V)
        return scores, (positions + 1, keys, values, memory_keys, memory_values)

    @torch.no_grad()
    def sample_without_cache(self, features: Tensor, max_length: int = MAX_LENGTH) -> Tensor:
        """:meth:`sample` the way cs231n's notebook samples: every step re-runs the model on all words so far.

        Same captions as :meth:`sample` (up to rounding); kept as the reference it is measured against.
        """
        self.check_can_generate()
        self.check_max_length(max_length)
        self.check_features(features)
        N, device = features.shape[0], features.device
        captions = torch.full((N, max_length), self.null_id, dtype=torch.long, device=device)
        partial = torch.full((N, 1), self.start_id, dtype=torch.long, device=device)
        finished = torch.zeros(N, dtype=torch.bool, device=device)
        training = self.training
        self.eval()
        try:
            for t in range(max_length):
                words = self(features, partial)[:, -1].argmax(dim=1)  # (N,)
                captions[:, t] = words.masked_fill(finished, self.null_id)
                finished |= words == self.end_id
                if bool(finished.all()):
                    break
                partial = torch.cat([partial, words[:, None]], dim=1)
        finally:
            self.train(training)
        return captions

    # ------------------------------------------------------------------ #
    # Helpers
    # ------------------------------------------------------------------ #

    def check_max_length(self, max_length: int) -> None:
        check_positive_integer("max_length", max_length)
        if max_length > self.max_length:
            raise ValueError(f"max_length={max_length} exceeds the model's max_length={self.max_length}")

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, input_dim={self.input_dim}, wordvec_dim={self.wordvec_dim}, "
            f"num_heads={self.num_heads}, num_layers={self.num_layers}, max_length={self.max_length}, "
            f"cs231n_version={self.cs231n_version}"
        )
