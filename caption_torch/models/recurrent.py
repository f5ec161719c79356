"""CaptioningRNN: the cs231n image-captioning model, built only from ``functional``.

    features (N, D) ──affine──► h0 (N, H)          (N, M, D): the mean of the M vectors, then the affine map
    captions_in (N, T) ──its U distinct words──► W_embed rows (U, W) ──affine──► input table (U, gH)
    input table, rows of captions_in ──the cell's sequence (rnn/lstm_lookup), from h0──► hidden (N, T, H)
    hidden ──vocab projection──► scores (N, T, V)   (the losses project only the counted positions)

In :meth:`CaptioningRNN.loss`, ``captions[:, :-1]`` is fed in and ``captions[:, 1:]`` is
predicted; positions whose target is ``<NULL>`` do not count. The decoder contract is
:class:`~caption_torch.models.captioner.Captioner`'s.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, nn

from caption_torch import functional as F
from caption_torch.functional import CELLS, State, check_positive_integer
from caption_torch.models.captioner import Captioner
from caption_torch.vocabulary import END, NULL, START

__all__ = ["CaptioningRNN", "NULL", "START", "END"]

PARAM_NAMES = ("W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "W_vocab", "b_vocab")


class CaptioningRNN(Captioner):
    """Image-captioning RNN or LSTM over pre-extracted image features.

    Args:
        word_to_idx: vocabulary, a mapping from word to id (V words; an id without a score row
            cannot be generated, and a row without a word decodes as <UNK>); must
            contain ``<NULL>``; sampling also needs ``<START>`` and ``<END>``.
        input_dim: D, the width of an image feature vector (512 for fc7-PCA). Features are (N, D),
            or (N, M, D) with M vectors per image: the initial hidden state is then the projection
            of the mean of the M vectors (the RNN has no attention to tell them apart).
        wordvec_dim: W, the width of a word vector.
        hidden_dim: H, the width of the recurrent hidden state.
        cell_type: a name in ``functional.CELLS``: ``'rnn'`` (tanh) or ``'lstm'``.
        dtype: dtype of every parameter (float64 for gradient checks).

    Parameters (``model.params``), with cs231n's names, shapes and initialisation:
        W_embed (V, W) ~ N(0, 1) / 100;   W_proj (D, H) ~ N(0, 1) / sqrt(D);  b_proj (H,) = 0
        Wx (W, gH) ~ N(0, 1) / sqrt(W);   Wh (H, gH) ~ N(0, 1) / sqrt(H);     b (gH,) = 0
        W_vocab (H, V) ~ N(0, 1) / sqrt(H);                                   b_vocab (V,) = 0
    where g = the cell's gate count: 1 for the RNN and 4 for the LSTM.
    """

    def __init__(
        self,
        word_to_idx: Mapping[str, int],
        input_dim: int = 512,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        cell_type: str = "rnn",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if cell_type not in CELLS:  # read now: a cell registered after import is accepted
            raise ValueError(f"cell_type must be one of {tuple(CELLS)}, got {cell_type!r}")
        super().__init__(word_to_idx, input_dim)
        for name, value in (("wordvec_dim", wordvec_dim), ("hidden_dim", hidden_dim)):
            check_positive_integer(name, value)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")

        self.cell_type = cell_type
        self.cell = CELLS[cell_type]
        self.wordvec_dim, self.hidden_dim = wordvec_dim, hidden_dim

        V, D, W, H = self.vocab_size, input_dim, wordvec_dim, hidden_dim
        gates = self.cell.gates

        def normal(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, dtype=dtype) * scale)

        def zeros(size: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(size, dtype=dtype))

        self.W_embed = normal(V, W, scale=1 / 100)
        self.W_proj = normal(D, H, scale=1 / math.sqrt(D))
        self.b_proj = zeros(H)
        self.Wx = normal(W, gates * H, scale=1 / math.sqrt(W))
        self.Wh = normal(H, gates * H, scale=1 / math.sqrt(H))
        self.b = zeros(gates * H)
        self.W_vocab = normal(H, V, scale=1 / math.sqrt(H))
        self.b_vocab = zeros(V)

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """The parameters under cs231n's names (the same objects as ``named_parameters``)."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    # ------------------------------------------------------------------ #
    # Training
    # ------------------------------------------------------------------ #

    def forward(self, features: Tensor, captions: Tensor) -> Tensor:
        """Scores of the next word at every position (the contract's ``forward``).

        Args:
            features: (N, D) or (N, M, D) image features, in the model's dtype.
            captions: (N, T) input token ids (``<START> w1 w2 ...``).

        Returns:
            (N, T, V) scores: position t scores the word after captions[:, :t + 1].
        """
        self.check_features(features)
        if not isinstance(captions, Tensor) or captions.dim() != 2 or captions.shape[0] != features.shape[0]:
            shape = tuple(captions.shape) if isinstance(captions, Tensor) else type(captions).__name__
            raise ValueError(f"captions must be an (N, T) tensor with N = {features.shape[0]} as features, got {shape}")
        N, T = captions.shape
        lengths = torch.full((N,), T, dtype=torch.long, device=captions.device)
        hidden = self._hidden_states(captions, self._initial_hidden(features), lengths)  # (N, T, H)
        return F.temporal_affine(hidden, self.W_vocab, self.b_vocab)

    def loss(self, features: Tensor, captions: Tensor) -> Tensor:
        """Training loss of a minibatch (cs231n's ``loss``).

        Args:
            features: (N, D) or (N, M, D) image features, in the model's dtype.
            captions: (N, T + 1) integer token ids, each caption ``<START> ... <END> <NULL>...``.

        Returns:
            Scalar: masked cross-entropy summed over the T predicted positions, divided by N.
        """
        self._check_captions(features, captions)
        mask = captions[:, 1:] != self.null_id  # (N, T): which predictions count
        return self._masked_loss(features, captions, mask)

    def weighted_loss(self, features: Tensor, captions: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        """``-sum weights * mask * log p(word) / N`` (the contract's ``weighted_loss``).

        Args:
            features: (N, [M,] D); captions: (N, T + 1) fed ``[:, :-1]`` and scored on ``[:, 1:]``.
            mask: (N, T) bool, the words that count; weights: (N,) per caption or (N, T) per word.
        """
        self._check_captions(features, captions)
        self.check_weights(mask, weights)
        return self._masked_loss(features, captions, mask, weights)

    def _check_captions(self, features: Tensor, captions: Tensor) -> None:
        self.check_features(features)
        if not isinstance(captions, Tensor) or captions.dim() != 2 or captions.shape[1] < 2:
            shape = tuple(captions.shape) if isinstance(captions, Tensor) else type(captions).__name__
            raise ValueError(f"captions must be an (N, T+1) tensor with T+1 >= 2, got {shape}")
        if captions.shape[0] != features.shape[0]:
            raise ValueError(f"captions hold {captions.shape[0]} captions but features hold {features.shape[0]} images")

    def _masked_loss(self, features: Tensor, captions: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
        """Loss of captions (N, T + 1) fed ``captions[:, :-1]`` and scored on ``captions[:, 1:]`` where mask (N, T)."""
        # The loss is a sum over captions, so their order is free: sorting by length lets the
        # recurrence skip every caption's padding (the steps after its last scored word).
        positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        lengths = (mask * positions).amax(dim=1)  # (N,): last scored position + 1
        lengths, order = lengths.sort(descending=True, stable=True)
        features, captions, mask = features[order], captions[order], mask[order]
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]  # (N, T) each

        h0 = self._initial_hidden(features)  # (N, H)
        hidden = self._hidden_states(captions_in, h0, lengths)  # (N, T, H)
        if weights is None:
            return F.vocab_softmax_loss(hidden, self.W_vocab, self.b_vocab, captions_out, mask)
        return F.policy_gradient_loss(hidden, self.W_vocab, self.b_vocab, captions_out, mask, weights[order])

    def _hidden_states(self, captions_in: Tensor, h0: Tensor, lengths: Tensor) -> Tensor:
        """Hidden states (N, T, H) for input words (N, T).

        Each input word's projection ``W_embed[w] @ Wx + b`` depends on the word only, so
        each distinct word of the batch is projected once, (U, W) @ (W, gH) with U <=
        min(N*T, V), and the recurrence gathers the rows of its packed steps from that
        table: no per-position product and no padded (N, T, W) or (N, T, gH) tensor, and
        backward sums each word's gradient before the products that give dWx and dW_embed.
        On COCO, where a few words fill most positions, U is far below N*T.
        """
        words, rows = torch.unique(captions_in, return_inverse=True)  # (U,) distinct words; (N, T) their rows
        table = self.input_table(words)  # (U, gH)
        return self.cell.sequence(rows, table, h0, self.Wh, lengths)

    # ------------------------------------------------------------------ #
    # Generation: the one-word-at-a-time API of captioner.Captioner
    # ------------------------------------------------------------------ #

    def initial_state(self, features: Tensor) -> State:
        """Recurrent state before the first word: ``(h0,)`` for the RNN, ``(h0, c0)`` for the LSTM, each (N, H).

        h0 is the projected image feature (of the mean of M vectors for (N, M, D) features); the
        cell's other states (the LSTM's c0) start at zero.
        """
        self.check_features(features)
        h0 = self._initial_hidden(features)
        return (h0, *(torch.zeros_like(h0) for _ in range(self.cell.state_size - 1)))

    def input_table(self, words: Tensor | None = None) -> Tensor:
        """Input projections ``W_embed[w] @ Wx + b``, (V, gH), or (U, gH) for the (U,) ``words`` given.

        What a step adds to ``h @ Wh`` for each word.
        """
        embedded = self.W_embed[None] if words is None else F.word_embedding(words[None], self.W_embed)  # (1, V|U, W)
        return F.temporal_affine(embedded, self.Wx, self.b)[0]

    def step(self, words: Tensor, state: State, input_table: Tensor | None = None) -> tuple[Tensor, State]:
        """Feed one word per sequence.

        Args:
            words: (N,) token ids of the current words.
            state: from :meth:`initial_state` or the previous step: ``(h,)`` or ``(h, c)``, each (N, H).
            input_table: optional :meth:`input_table`, computed once per caption batch: each step
                then looks its words' projections up instead of multiplying (N, W) @ (W, gH).

        Returns:
            ``(scores, state)``: (N, V) unnormalised scores of the next word, and the new state.
        """
        if input_table is not None:
            x_projected = F.word_embedding(words[:, None], input_table)[:, 0]  # (N, gH), looked up
        else:
            x_projected = self.input_table(words)  # (N, gH), embedded and projected
        state = self.cell.step(x_projected, state, self.Wh)
        scores = F.temporal_affine(state[0][:, None], self.W_vocab, self.b_vocab)[:, 0]  # (N, V)
        return scores, state

    def generation_context(self, steps: int) -> Tensor | None:
        """The (V, gH) :meth:`input_table` when ``steps`` row-steps would multiply more rows than it has.

        One (V, W) @ (W, gH) product then replaces ``steps`` rows of (N, W) @ (W, gH) products.
        """
        return self.input_table() if steps > self.vocab_size else None

    # ------------------------------------------------------------------ #
    # Helpers
    # ------------------------------------------------------------------ #

    def _initial_hidden(self, features: Tensor) -> Tensor:
        """h0 (N, H): the projection of the (N, D) features, or of the mean of (N, M, D) features' M vectors."""
        if features.dim() == 3:
            features = features[:, 0] if features.shape[1] == 1 else F.memory_mean(features)  # (N, D)
        return F.temporal_affine(features[:, None], self.W_proj, self.b_proj)[:, 0]  # (N, H)

    def extra_repr(self) -> str:
        return (
            f"cell_type={self.cell_type!r}, vocab_size={self.vocab_size}, input_dim={self.input_dim}, "
            f"wordvec_dim={self.wordvec_dim}, hidden_dim={self.hidden_dim}"
        )
