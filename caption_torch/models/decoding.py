"""Decoding strategies built only on the one-word-at-a-time API of the decoder contract.

    state = model.initial_state(features)                features (N, [M,] D) -> tuple of (N, ...) tensors
    context = model.generation_context(steps)            reused by every step of a run (or None)
    scores, state = model.step(words, state, context)    words (N,)           -> scores (N, V)

(:class:`~caption_torch.models.captioner.Captioner` states the contract.) They work for the
RNN, the LSTM, the Transformer and any other decoder of the contract alike. Every one returns what
``Captioner.sample`` returns: an (N, max_length)
LongTensor whose column 0 is the first generated word (not ``<START>``), with only
``<NULL>`` after a row's ``<END>``. A row that never emits ``<END>`` fills all
``max_length`` columns.

Beam search keeps K hypotheses per image and runs all N * K of them as one batch::

    state rows   [img0 beam0, img0 beam1, ..., img0 beamK-1, img1 beam0, ...]   (N * K, ...)
    scores       (N * K, V) ──view──► (N, K, V) ──flatten K and V──► (N, K * V)
                                      top K per image ──► parent beam = i // V, word = i % V

Log-probabilities are accumulated in float64 so that summing them over a caption
does not make near-equal hypotheses tie.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from caption_torch.functional import check_positive_integer, check_token_ids
from caption_torch.models.captioner import Captioner
from caption_torch.models.config import MAX_LENGTH

__all__ = ["greedy_decode", "temperature_sample", "beam_search", "caption_log_probs", "decode", "DECODE_METHODS"]

DECODE_METHODS = ("greedy", "beam", "sample")


# --------------------------------------------------------------------------- #
# Greedy and sampling: one hypothesis per image
# --------------------------------------------------------------------------- #


@torch.no_grad()
def greedy_decode(model: Captioner, features: Tensor, max_length: int = MAX_LENGTH) -> Tensor:
    """The most likely word at every step; equals ``model.sample(features, max_length)``.

    Args:
        features: (N, [M,] D) image features.

    Returns:
        (N, max_length) LongTensor of word ids.
    """
    return model.sample(features, max_length)


@torch.no_grad()
def temperature_sample(
    model: Captioner,
    features: Tensor,
    temperature: float = 1.0,
    max_length: int = MAX_LENGTH,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw every word from softmax(scores / temperature).

    Temperatures below 1 sharpen the distribution (towards greedy as it goes to 0),
    above 1 flatten it.

    Args:
        features: (N, [M,] D) image features.
        temperature: positive.
        generator: source of randomness (on the features' device), for reproducible draws.

    Returns:
        (N, max_length) LongTensor of word ids.
    """
    _check_temperature(temperature)

    def draw(scores: Tensor) -> Tensor:
        # float64: at tiny temperatures scores / temperature would overflow float32.
        probs = torch.softmax(scores.double() / temperature, dim=1)  # (N, V)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return model.generate(features, max_length, draw)


# --------------------------------------------------------------------------- #
# Beam search
# --------------------------------------------------------------------------- #


@torch.no_grad()
def beam_search(
    model: Captioner,
    features: Tensor,
    beam_size: int = 3,
    max_length: int = MAX_LENGTH,
    length_normalization: bool = True,
) -> Tensor:
    """The best of ``beam_size`` hypotheses per image, batched over images and beams.

    A hypothesis is ranked by its mean log-probability per generated word (``<END>``
    included) or, without length normalisation, by its summed log-probability. At
    each step the K hypotheses of an image are replaced by the K best candidates
    among: every live hypothesis extended by every word, and every finished
    hypothesis (ended by ``<END>``) as it is - it keeps its score and is not extended.
    The search stops when all hypotheses are finished or after ``max_length`` words.
    The answer is the best of the finished hypotheses that were ever in the beam and
    of the live ones at the end.

    With ``beam_size=1`` this is greedy decoding. With larger K it usually beats
    greedy but is not guaranteed to: greedy's prefix can fall out of the beam.

    Args:
        features: (N, [M,] D) image features.
        beam_size: K, the hypotheses kept per image.
        length_normalization: rank by mean instead of summed log-probability; the sum
            favours short captions.

    Returns:
        (N, max_length) LongTensor of word ids, formatted as :func:`greedy_decode`'s.
    """
    model.check_can_generate()
    check_positive_integer("beam_size", beam_size)
    model.check_max_length(max_length)
    N, K, V, device = features.shape[0], beam_size, model.vocab_size, features.device
    state = tuple(part.repeat_interleave(K, dim=0) for part in model.initial_state(features))  # (N*K, H) each
    beams = _Beams(N, K, max_length, model.null_id, length_normalization, device)
    words = torch.full((N * K,), model.start_id, dtype=torch.long, device=device)
    context = model.generation_context(N * K * max_length)  # e.g. the RNN's per-word input table

    for t in range(max_length):
        scores, state = model.step(words, state, context)
        log_probs = torch.log_softmax(scores.double(), dim=1).view(N, K, V)
        parent, word = beams.advance(t, log_probs, model.end_id)
        rows = (torch.arange(N, device=device)[:, None] * K + parent).view(N * K)  # the parents' state rows
        state = tuple(part.index_select(0, rows) for part in state)
        words = word.view(N * K)
        if beams.done():
            break
    return beams.best()


class _Beams:
    """The K hypotheses of each of N images: their words, scores and which have finished.

    Args:
        N, K: images and hypotheses per image.
        max_length: words per hypothesis.
        null_id: the word a finished hypothesis "emits" (its padding).
        length_normalization: rank by mean instead of summed log-probability.
    """

    def __init__(self, N: int, K: int, max_length: int, null_id: int, length_normalization: bool, device) -> None:
        self.N, self.K, self.null_id, self.length_normalization = N, K, null_id, length_normalization
        self.tokens = torch.full((N, K, max_length), null_id, dtype=torch.long, device=device)
        # The K beams of an image start identical; -inf keeps all but the first from
        # expanding at step 0, so that the first step yields K different words.
        self.log_prob_sum = torch.zeros(N, K, dtype=torch.float64, device=device)
        self.log_prob_sum[:, 1:] = float("-inf")
        self.lengths = torch.zeros(N, K, dtype=torch.long, device=device)  # words generated, <END> included
        self.finished = torch.zeros(N, K, dtype=torch.bool, device=device)
        # A finished hypothesis can later be pushed out of the beam by live ones that
        # score better for now but worse in the end; remember the best one ever seen.
        self.best_finished_score = torch.full((N,), float("-inf"), dtype=torch.float64, device=device)
        self.best_finished_tokens = torch.full((N, max_length), null_id, dtype=torch.long, device=device)

    def ranking(self, log_prob_sum: Tensor, lengths: Tensor) -> Tensor:
        """The score hypotheses are ranked by: the mean or the sum of their log-probabilities."""
        return log_prob_sum / lengths.clamp(min=1) if self.length_normalization else log_prob_sum

    def advance(self, t: int, log_probs: Tensor, end_id: int) -> tuple[Tensor, Tensor]:
        """Replace the beams by the K best candidates of step t.

        Args:
            log_probs: (N, K, V) float64 log-probabilities of the next word of every hypothesis.

        Returns:
            ``(parent, word)``, each (N, K): the hypothesis each new one extends, and its word.
        """
        candidate_sum, candidate_length = self._score_candidates(t, log_probs)
        parent, word = self._reorder(candidate_sum, candidate_length, end_id)
        self.tokens[:, :, t] = word
        self._remember_finished()
        return parent, word

    def _score_candidates(self, t: int, log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """Candidate (beam k, word v) sums (N, K, V) and lengths (N, K).

        A finished beam has one candidate, itself, which sits in column <NULL> (the word
        it "emits"); its other columns are -inf.
        """
        candidate_sum = (self.log_prob_sum[..., None] + log_probs).masked_fill(self.finished[..., None], float("-inf"))
        candidate_sum[..., self.null_id] = torch.where(
            self.finished, self.log_prob_sum, candidate_sum[..., self.null_id]
        )
        candidate_length = torch.where(self.finished, self.lengths, t + 1)  # (N, K)
        return candidate_sum, candidate_length

    def _reorder(self, candidate_sum: Tensor, candidate_length: Tensor, end_id: int) -> tuple[Tensor, Tensor]:
        """Keep the K best candidates per image; the beams' words and scores follow their parents."""
        N, K, V = candidate_sum.shape
        candidate_score = self.ranking(candidate_sum, candidate_length[..., None])
        best = candidate_score.view(N, K * V).topk(K, dim=1).indices  # (N, K)
        parent, word = best // V, best % V
        parent_finished = self.finished.gather(1, parent)
        self.log_prob_sum = candidate_sum.view(N, K * V).gather(1, best)
        self.lengths = candidate_length.gather(1, parent)
        self.finished = parent_finished | (word == end_id)
        # A finished parent's word is <NULL> already unless a -inf filler was picked
        # (only when fewer than K candidates are finite); keep the format either way.
        word = word.masked_fill(parent_finished, self.null_id)
        self.tokens = self.tokens.gather(1, parent[..., None].expand_as(self.tokens))
        return parent, word

    def _remember_finished(self) -> None:
        ranked = self.ranking(self.log_prob_sum, self.lengths).masked_fill(~self.finished, float("-inf"))
        finished_score, finished_beam = ranked.max(1)
        improved = finished_score > self.best_finished_score  # (N,)
        self.best_finished_score = torch.where(improved, finished_score, self.best_finished_score)
        self.best_finished_tokens[improved] = self.tokens[improved, finished_beam[improved]]

    def done(self) -> bool:
        """Every beam finished (-inf beams are fillers that can never be chosen; they need not finish)."""
        return bool((self.finished | self.log_prob_sum.isneginf()).all())

    def best(self) -> Tensor:
        """(N, max_length): the best finished hypothesis, or a live one that reached max_length and ranks higher."""
        final_score, final_beam = self.ranking(self.log_prob_sum, self.lengths).max(dim=1)  # (N,)
        final_tokens = self.tokens[torch.arange(self.N, device=self.tokens.device), final_beam]
        return torch.where((final_score > self.best_finished_score)[:, None], final_tokens, self.best_finished_tokens)


# --------------------------------------------------------------------------- #
# Scoring given captions
# --------------------------------------------------------------------------- #


@torch.no_grad()
def caption_log_probs(
    model: Captioner, features: Tensor, captions: Tensor, length_normalization: bool = False
) -> Tensor:
    """Log-probability of given captions under the model (teacher forcing), in float64.

    Every word up to and including the first ``<END>`` counts, as in the decoders:
    ``<NULL>`` after ``<END>`` is padding, a ``<NULL>`` before it is a word the model
    chose. A row without ``<END>`` counts all T words.

    Args:
        features: (N, [M,] D) image features.
        captions: (N, T) word ids in the decoders' format (no ``<START>``).
        length_normalization: return the mean log-probability per counted word (the
            score beam search ranks by) instead of the sum.

    Returns:
        (N,) float64 tensor.
    """
    model.check_can_generate()
    state = model.initial_state(features)  # checks the features first: the message below quotes their N
    if not isinstance(captions, Tensor) or captions.dim() != 2 or captions.shape[0] != features.shape[0]:
        shape = tuple(captions.shape) if isinstance(captions, Tensor) else type(captions).__name__
        raise ValueError(f"captions must be an (N, T) tensor with N = {features.shape[0]}, got {shape}")
    check_token_ids("captions", captions, model.vocab_size, ndim=2)
    N, T = captions.shape
    words = torch.full((N,), model.start_id, dtype=torch.long, device=features.device)
    total = torch.zeros(N, dtype=torch.float64, device=features.device)
    counted = torch.zeros(N, dtype=torch.long, device=features.device)
    ended = torch.zeros(N, dtype=torch.bool, device=features.device)
    for t in range(T):
        scores, state = model.step(words, state)
        words = captions[:, t]
        log_probs = torch.log_softmax(scores.double(), dim=1).gather(1, words[:, None])[:, 0]  # (N,)
        total += torch.where(ended, 0.0, log_probs)
        counted += ~ended
        ended |= words == model.end_id
    return total / counted.clamp(min=1) if length_normalization else total


# --------------------------------------------------------------------------- #
# One entry point
# --------------------------------------------------------------------------- #


def decode(
    model: Captioner,
    features: Tensor,
    method: str = "greedy",
    *,
    beam_size: int = 3,
    temperature: float = 1.0,
    max_length: int = MAX_LENGTH,
    length_normalization: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Decode with ``method`` in ``DECODE_METHODS``: ``"greedy"``, ``"beam"`` or ``"sample"``.

    Every argument is checked whichever method uses it, so that a bad setting fails
    at once rather than when someone switches methods.

    Returns:
        (N, max_length) LongTensor of word ids.
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"method must be one of {DECODE_METHODS}, got {method!r}")
    check_positive_integer("beam_size", beam_size)
    _check_temperature(temperature)
    check_positive_integer("max_length", max_length)
    if method == "beam":
        return beam_search(model, features, beam_size, max_length, length_normalization)
    if method == "sample":
        return temperature_sample(model, features, temperature, max_length, generator)
    return greedy_decode(model, features, max_length)


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
