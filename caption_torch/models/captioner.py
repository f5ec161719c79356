"""The decoder contract: what every captioning decoder provides, and what it gets from :class:`Captioner`.

A decoder (``CaptioningRNN``, ``CaptioningTransformer``, or a new one) subclasses
:class:`Captioner` and implements its five abstract methods; training, generation, beam search
(``decoding.py``), self-critical training and the Lightning system are built on them alone.
The contract is written out once, in :class:`Captioner`'s docstring.
"""

from __future__ import annotations

import abc
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from caption_torch.functional import check_positive_integer
from caption_torch.models.config import MAX_LENGTH
from caption_torch.vocabulary import END, NULL, START, index_words

State = tuple[Tensor, ...]


class Captioner(nn.Module, abc.ABC):
    """Base class of the decoders: the contract every decoder fulfils, written out here once.

    Image features are the decoder's memory: ``(N, M, D)``, M vectors of width D per image
    (M image regions), or ``(N, D)``, read as M = 1 (cs231n's one fc7 vector per image, the
    fast case). Captions are word ids; ``captions[:, 0]`` is ``<START>`` and ``<NULL>`` pads.

    A subclass calls ``super().__init__(word_to_idx, input_dim)`` and implements:

    ``forward(features, captions) -> scores``
        features (N, [M,] D), captions (N, T) the words fed in (``<START> w1 w2 ...``);
        returns (N, T, V) unnormalised scores, position t scoring the word after
        ``captions[:, :t + 1]``. Teacher forcing: what every loss is the cross-entropy of.
    ``loss(features, captions) -> scalar``
        captions (N, T + 1): ``captions[:, :-1]`` fed in, ``captions[:, 1:]`` predicted, positions
        whose target is ``<NULL>`` not counted. The training loss; each decoder keeps its own
        normalisation (cs231n's: the RNN sums over words and divides by N, the Transformer
        divides by N * T) and names it in the registry's ``loss_label``.
    ``weighted_loss(features, captions, mask, weights) -> scalar``
        ``-sum_{n,t} weights * mask * log p(captions[n, t + 1] | captions[n, :t + 1]) / N`` for
        captions (N, T + 1), mask (N, T) bool (the words that count) and weights (N,) one per
        caption or (N, T) one per word, which may be negative; no gradient flows into them. What
        self-critical training minimises (through :meth:`policy_loss`, which builds mask and
        captions from generated words and turns the dropouts off).
    ``initial_state(features) -> state``
        The generation state before the first word: a tuple of tensors, each with the batch in
        dimension 0, so that generation drops, reorders or repeats rows of any decoder's state
        the same way (``part[keep]``, ``part.index_select(0, rows)``, ``part.repeat_interleave``).
    ``step(words, state, context=None) -> (scores, state)``
        Feed one word (N,) per row: (N, V) scores of the next word and the state after it.
        ``context`` is what :meth:`generation_context` returned for this generation run.

    It may override :meth:`generation_context` (something every step of a run reuses, such as
    the RNN's per-word input table) and :meth:`check_max_length` (e.g. a positional table's
    length). In return it gets :meth:`generate`, :meth:`sample`, :meth:`policy_loss`, the
    feature checks and the vocabulary (``word_to_idx``, ``idx_to_word``, ``vocab_size``,
    ``null_id``, ``start_id``, ``end_id``).
    """

    def __init__(self, word_to_idx: Mapping[str, int], input_dim: int) -> None:
        """``word_to_idx`` (must hold ``<NULL>``; ids need not be 0..V-1, but each is one word's) and D = input_dim."""
        super().__init__()
        check_positive_integer("input_dim", input_dim)
        if NULL not in word_to_idx:
            raise ValueError(f"word_to_idx must contain the padding token {NULL!r}")
        self.input_dim = input_dim
        self.idx_to_word = index_words(word_to_idx)
        self.word_to_idx = dict(word_to_idx)
        self.vocab_size = len(self.word_to_idx)
        self.null_id = self.word_to_idx[NULL]
        self.start_id = self.word_to_idx.get(START)
        self.end_id = self.word_to_idx.get(END)

    # ------------------------------------------------------------------ #
    # The contract (see the class docstring)
    # ------------------------------------------------------------------ #

    @abc.abstractmethod
    def forward(self, features: Tensor, captions: Tensor) -> Tensor:
        """(N, T, V) scores of the next word at every position of captions (N, T), for features (N, [M,] D)."""

    @abc.abstractmethod
    def loss(self, features: Tensor, captions: Tensor) -> Tensor:
        """The training loss (scalar) of captions (N, T + 1) ``<START> ... <END> <NULL>...``."""

    @abc.abstractmethod
    def weighted_loss(self, features: Tensor, captions: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        """``-sum weights * mask * log p(word) / N`` of captions (N, T + 1) fed ``[:, :-1]``, scored on ``[:, 1:]``.

        mask (N, T) bool; weights (N,) per caption or (N, T) per word.
        """

    @abc.abstractmethod
    def initial_state(self, features: Tensor) -> State:
        """The generation state before the first word, for features (N, [M,] D): tensors with the batch first."""

    @abc.abstractmethod
    def step(self, words: Tensor, state: State, context=None) -> tuple[Tensor, State]:
        """Feed words (N,): scores (N, V) of the next word and the new state."""

    # ------------------------------------------------------------------ #
    # Self-critical training
    # ------------------------------------------------------------------ #

    def policy_loss(self, features: Tensor, generated: Tensor, weights: Tensor) -> Tensor:
        """Self-critical training's loss: the log-likelihood of generated captions weighted per caption.

        Args:
            features: (N, [M,] D) image features, one row per caption (repeat an image's row for its samples).
            generated: (N, L) word ids as :meth:`generate` returns them (no ``<START>``; ``<NULL>``
                after ``<END>``). Every word up to and including the first ``<END>`` counts (a
                ``<NULL>`` before it is a word the model chose), all L if there is none.
            weights: (N,) e.g. reward minus baseline.

        Returns:
            Scalar ``-sum_n weights[n] * log p(caption n) / N`` (:meth:`weighted_loss`), the
            log-likelihoods taken with every dropout off, as :meth:`generate` draws the captions:
            with the dropouts on the gradient would be another policy's (a dropped-out network's).
        """
        self.check_features(features)
        self.check_can_generate()
        if not isinstance(generated, Tensor) or generated.dim() != 2 or generated.shape[0] != features.shape[0]:
            shape = tuple(generated.shape) if isinstance(generated, Tensor) else type(generated).__name__
            raise ValueError(f"generated must be an (N, L) tensor with N = {features.shape[0]}, got {shape}")
        self.check_max_length(generated.shape[1])
        N = features.shape[0]
        if not isinstance(weights, Tensor) or weights.dim() != 1 or weights.shape[0] != N:
            shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise ValueError(f"weights must be an (N,) tensor, one per caption, with N = {N}; got {shape}")
        is_end = generated == self.end_id
        mask = (is_end.cumsum(dim=1) - is_end.long()) == 0  # (N, L): words up to and including the first <END>
        start = torch.full_like(generated[:, :1], self.start_id)
        training = self.training
        self.eval()
        try:
            return self.weighted_loss(features, torch.cat([start, generated], dim=1), mask, weights)
        finally:
            self.train(training)

    # ------------------------------------------------------------------ #
    # Generation, one word at a time
    # ------------------------------------------------------------------ #

    def generation_context(self, steps: int):
        """What :meth:`step` may reuse over a generation run of ``steps`` row-steps (None: nothing)."""
        return None

    @torch.no_grad()
    def generate(self, features: Tensor, max_length: int, choose_next: Callable[[Tensor], Tensor]) -> Tensor:
        """Generate captions word by word, feeding each chosen word back in.

        Args:
            features: (N, [M,] D) image features.
            max_length: number of words to generate per image (>= 1).
            choose_next: maps scores (n, V) of the next word to chosen word ids (n,).

        Returns:
            (N, max_length) LongTensor. Column 0 is the first generated word (not
            ``<START>``); after a row emits ``<END>`` the rest of it is ``<NULL>``.
        """
        self.check_can_generate()
        self.check_max_length(max_length)
        state = self.initial_state(features)
        N, device = features.shape[0], features.device
        context = self.generation_context(N * max_length)
        captions = torch.full((N, max_length), self.null_id, dtype=torch.long, device=device)
        words = torch.full((N,), self.start_id, dtype=torch.long, device=device)
        running = torch.arange(N, device=device)  # rows of captions still being generated
        for t in range(max_length):
            scores, state = self.step(words, state, context)  # (n, V) for the n running rows
            words = choose_next(scores)
            captions[running, t] = words
            ended = words == self.end_id
            # A caption that ended leaves the batch: later steps cost only what is still running
            # (one host sync per word decides it).
            if bool(ended.any()):
                keep = ~ended
                running, words = running[keep], words[keep]
                state = tuple(part[keep] for part in state)
                if running.numel() == 0:
                    break
        return captions

    def sample(self, features: Tensor, max_length: int = MAX_LENGTH) -> Tensor:
        """Greedy captions: the most likely word at every step (cs231n's ``sample``).

        Args:
            features: (N, [M,] D) image features.
            max_length: number of words to generate per image.

        Returns:
            (N, max_length) LongTensor, as :meth:`generate`.
        """
        return self.generate(features, max_length, lambda scores: scores.argmax(dim=1))

    # ------------------------------------------------------------------ #
    # Checks
    # ------------------------------------------------------------------ #

    def check_can_generate(self) -> None:
        """Generation starts from ``<START>`` and stops at ``<END>``: both must be in the vocabulary."""
        missing = [token for token, idx in ((START, self.start_id), (END, self.end_id)) if idx is None]
        if missing:
            raise ValueError(f"word_to_idx lacks {', '.join(missing)}, needed to generate captions")

    def check_max_length(self, max_length: int) -> None:
        """max_length words can be generated: an integer >= 1 (and, for the Transformer, within its positions)."""
        check_positive_integer("max_length", max_length)

    def check_features(self, features: Tensor) -> None:
        """features must be (N, D) or (N, M, D) with M >= 1, D = input_dim, in the parameters' dtype."""
        if not isinstance(features, Tensor) or features.dim() not in (2, 3):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be an (N, D) or (N, M, D) tensor, got {shape}")
        if features.shape[-1] != self.input_dim:
            raise ValueError(
                f"features have width {features.shape[-1]} but the model expects input_dim={self.input_dim}"
            )
        if features.dim() == 3 and features.shape[1] == 0:
            raise ValueError(f"features must hold M >= 1 vectors per image, got shape {tuple(features.shape)}")
        dtype = next(self.parameters()).dtype
        if features.dtype != dtype:
            raise ValueError(
                f"features have dtype {features.dtype} but the model's parameters are {dtype}; "
                f"convert them with features.to({dtype})"
            )

    def check_weights(self, mask: Tensor, weights: Tensor) -> None:
        """:meth:`weighted_loss`'s mask must be (N, T) bool and its weights (N,) or (N, T) floats."""
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
            shape = (tuple(mask.shape), mask.dtype) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be an (N, T) bool tensor, got {shape}")
        N, T = mask.shape
        if not isinstance(weights, Tensor) or tuple(weights.shape) not in ((N,), (N, T)):
            shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise ValueError(f"weights must be (N,) = ({N},) per caption or (N, T) = ({N}, {T}) per word, got {shape}")

    @staticmethod
    def as_memory(features: Tensor) -> Tensor:
        """features (N, D) or (N, M, D) as memory (N, M, D): (N, D) is M = 1 (a view)."""
        return features[:, None] if features.dim() == 2 else features
