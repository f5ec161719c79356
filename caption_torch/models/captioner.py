"""What every decoder shares: its vocabulary, the checks of its inputs, and word-by-word generation.

A decoder (``CaptioningRNN``, ``CaptioningTransformer``) subclasses :class:`Captioner` and
provides the one-word-at-a-time API that generation and ``decoding.py`` are built on::

    state = model.initial_state(features)                  features (N, D) -> a tuple of (N, ...) tensors
    context = model.generation_context(steps)              what a generation run of `steps` row-steps may reuse
    scores, state = model.step(words, state, context)      words (N,) -> scores (N, V) of the next word

Every tensor of a state has the batch in dimension 0, so a decoder drops or reorders rows
of any model's state the same way (``part[keep]``, ``part.index_select(0, rows)``).
"""

from __future__ import annotations

import numbers
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from caption_torch.vocabulary import END, NULL, START, index_words


def check_positive_integer(name: str, value: int) -> None:
    """``value`` must be an integer >= 1 (numpy's too, bool not): e.g. max_length, as captions have a word."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class Captioner(nn.Module):
    """Base class of the decoders: vocabulary, feature checks, and :meth:`generate` / :meth:`sample`."""

    input_dim: int

    def _set_vocabulary(self, word_to_idx: Mapping[str, int]) -> None:
        """``word_to_idx`` (must hold ``<NULL>``; ids need not be 0..V-1, but each is one word's) and its inverse."""
        if NULL not in word_to_idx:
            raise ValueError(f"word_to_idx must contain the padding token {NULL!r}")
        self.idx_to_word = index_words(word_to_idx)
        self.word_to_idx = dict(word_to_idx)
        self.vocab_size = len(self.word_to_idx)
        self.null_id = self.word_to_idx[NULL]
        self.start_id = self.word_to_idx.get(START)
        self.end_id = self.word_to_idx.get(END)

    # ------------------------------------------------------------------ #
    # Self-critical training
    # ------------------------------------------------------------------ #

    def policy_loss(self, features: Tensor, generated: Tensor, weights: Tensor) -> Tensor:
        """Self-critical training's loss: the log-likelihood of generated captions weighted per caption.

        Args:
            features: (N, D) image features, one row per caption (repeat an image's row for its samples).
            generated: (N, L) word ids as :meth:`generate` returns them (no ``<START>``; ``<NULL>``
                after ``<END>``). Every word up to and including the first ``<END>`` counts (a
                ``<NULL>`` before it is a word the model chose), all L if there is none.
            weights: (N,) e.g. reward minus baseline.

        Returns:
            Scalar ``-sum_n weights[n] * log p(caption n) / N`` (see ``functional.policy_gradient_loss``),
            the log-likelihoods taken with every dropout off, as :meth:`generate` draws the captions:
            with the dropouts on the gradient would be another policy's (a dropped-out network's).
        """
        self._check_features(features)
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
            return self._policy_loss(features, torch.cat([start, generated], dim=1), mask, weights)
        finally:
            self.train(training)

    def _policy_loss(self, features: Tensor, captions: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        """The weighted loss of captions (N, L + 1) fed ``[:, :-1]``, scored on ``[:, 1:]`` where mask (N, L)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ #
    # Generation, one word at a time
    # ------------------------------------------------------------------ #

    def initial_state(self, features: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def step(self, words: Tensor, state: tuple[Tensor, ...], context=None) -> tuple[Tensor, tuple[Tensor, ...]]:
        raise NotImplementedError

    def generation_context(self, steps: int):
        """What :meth:`step` may reuse over a generation run of ``steps`` row-steps (None: nothing)."""
        return None

    @torch.no_grad()
    def generate(self, features: Tensor, max_length: int, choose_next: Callable[[Tensor], Tensor]) -> Tensor:
        """Generate captions word by word, feeding each chosen word back in.

        Args:
            features: (N, D) image features.
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

    def sample(self, features: Tensor, max_length: int = 30) -> Tensor:
        """Greedy captions: the most likely word at every step (cs231n's ``sample``).

        Args:
            features: (N, D) image features.
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

    def _check_features(self, features: Tensor) -> None:
        """features must be (N, input_dim) in the parameters' dtype."""
        if not isinstance(features, Tensor) or features.dim() != 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be an (N, D) tensor, got {shape}")
        if features.shape[1] != self.input_dim:
            raise ValueError(
                f"features have width {features.shape[1]} but the model expects input_dim={self.input_dim}"
            )
        dtype = next(self.parameters()).dtype
        if features.dtype != dtype:
            raise ValueError(
                f"features have dtype {features.dtype} but the model's parameters are {dtype}; "
                f"convert them with features.to({dtype})"
            )
