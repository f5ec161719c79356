"""The decoder contract: a decoder written from Captioner alone trains, generates, beam-searches and
runs self-critical steps; every registered decoder's forward, step and losses agree with each other."""

import numpy as np
import pytest
import torch
from torch import nn

import caption_torch.functional as F
from caption_torch.metrics.cider import CiderD, Sentences
from caption_torch.models.captioner import Captioner
from caption_torch.models.decoding import beam_search, caption_log_probs, greedy_decode, temperature_sample
from caption_torch.models.registry import DECODERS, CaptionConfig, build_decoder
from caption_torch.training.self_critical import self_critical_step

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "cat": 5, "dog": 6, "sat": 7, "ran": 8}


class BagOfWords(Captioner):
    """A decoder with no recurrence: the next word's scores are the image's row plus the current word's row.

    scores(w_t) = mean_m(features) @ W_image + b + W_word[w_t]   (W_word (V, V): one row per current word)
    """

    def __init__(self, word_to_idx, input_dim, dtype=torch.float64):
        super().__init__(word_to_idx, input_dim)
        V = self.vocab_size
        self.W_image = nn.Parameter(torch.randn(input_dim, V, dtype=dtype) * 0.1)
        self.b = nn.Parameter(torch.zeros(V, dtype=dtype))
        self.W_word = nn.Parameter(torch.randn(V, V, dtype=dtype) * 0.1)

    def _image(self, features):
        mean = F.memory_mean(self.as_memory(features))  # (N, D)
        return F.temporal_affine(mean[:, None], self.W_image, self.b)[:, 0]  # (N, V)

    def forward(self, features, captions):
        self.check_features(features)
        return self._image(features)[:, None] + F.word_embedding(captions, self.W_word)  # (N, T, V)

    def loss(self, features, captions):
        mask = captions[:, 1:] != self.null_id
        return self.weighted_loss(features, captions, mask, torch.ones(captions.shape[0], dtype=torch.float64))

    def weighted_loss(self, features, captions, mask, weights):
        self.check_weights(mask, weights)
        scores = self(features, captions[:, :-1])  # (N, T, V)
        N, T, V = scores.shape
        per_word = (weights[:, None].expand(N, T) if weights.dim() == 1 else weights) * mask
        return F.weighted_softmax_loss(scores.reshape(N * T, V), captions[:, 1:].reshape(N * T),
                                       per_word.reshape(N * T), N)  # fmt: skip

    def initial_state(self, features):
        self.check_features(features)
        return (self._image(features),)

    def step(self, words, state, context=None):
        (image,) = state
        return image + F.word_embedding(words[:, None], self.W_word)[:, 0], state


def ids(text, length=None):
    words = [VOCAB[w] for w in text.split()]
    return words + [VOCAB["<NULL>"]] * ((length or len(words)) - len(words))


def test_the_base_class_is_abstract_and_names_what_is_missing():
    with pytest.raises(TypeError, match="abstract"):
        Captioner(VOCAB, 4)

    class NoWeightedLoss(BagOfWords):
        weighted_loss = Captioner.weighted_loss  # back to the abstract declaration

    with pytest.raises(TypeError, match="weighted_loss"):
        NoWeightedLoss(VOCAB, 4)


def test_a_decoder_from_the_base_class_alone_trains_generates_and_beam_searches():
    """Two images, one caption each: a few optimizer steps, then greedy and beam search say them."""
    torch.manual_seed(0)
    model = BagOfWords(VOCAB, 4)
    features = torch.randn(2, 3, 4, dtype=torch.float64)  # M = 3 vectors per image
    captions = torch.tensor([ids("<START> a cat sat <END>", 6), ids("<START> dog ran <END>", 6)])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    first = model.loss(features, captions).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.loss(features, captions)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    expected = torch.tensor([ids("a cat sat <END>", 6), ids("dog ran <END>", 6)])
    assert torch.equal(greedy_decode(model, features, max_length=6), expected)
    assert torch.equal(beam_search(model, features, beam_size=3, max_length=6), expected)


def test_a_decoder_from_the_base_class_alone_runs_self_critical_steps():
    """The step's loss is -sum(advantage * log p(sample)) / samples, with log p from the step API."""
    torch.manual_seed(1)
    model = BagOfWords(VOCAB, 4)
    references = torch.tensor([[ids("<START> a cat sat <END>", 6)], [ids("<START> a dog ran <END>", 6)]])
    sentences = Sentences.from_ids(references[:, 0], VOCAB["<END>"], (VOCAB["<START>"], VOCAB["<NULL>"]))
    reward = CiderD(sentences, np.arange(2), len(VOCAB))
    features = torch.randn(2, 4, dtype=torch.float64)
    step = self_critical_step(model, reward, features, references, "mean", 3, 5, torch.Generator().manual_seed(2))
    repeated = features.repeat_interleave(3, 0)
    samples = temperature_sample(model, repeated, 1.0, 5, torch.Generator().manual_seed(2))  # the step's samples
    log_probs = caption_log_probs(model, repeated, samples)
    expected = -(torch.as_tensor(step.advantages) * log_probs).sum() / 6
    torch.testing.assert_close(step.loss, expected, rtol=1e-12, atol=1e-12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for seed in range(30):
        optimizer.zero_grad()
        self_critical_step(
            model, reward, features, references, "mean", 3, 5, torch.Generator().manual_seed(seed)
        ).loss.backward()
        optimizer.step()
    greedy = Sentences.from_ids(model.sample(features, 5), VOCAB["<END>"], (VOCAB["<START>"], VOCAB["<NULL>"]))
    before = Sentences.from_ids(samples[::3], VOCAB["<END>"], (VOCAB["<START>"], VOCAB["<NULL>"]))
    after_scores = reward.scores(greedy, np.arange(2), sentences, np.arange(2))
    assert after_scores.mean() > reward.scores(before, np.arange(2), sentences, np.arange(2)).mean()


def make_decoder(name):
    torch.manual_seed(3)
    if name == "bag_of_words":
        return BagOfWords(VOCAB, 4).eval()
    sizes = {"hidden_dim": 6, "num_heads": 2, "num_layers": 2}
    own = {size: value for size, value in sizes.items() if size in DECODERS[name].config.names()}
    config = CaptionConfig.of(name, wordvec_dim=8, max_length=8, **own)
    return build_decoder(VOCAB, 4, config, torch.float64).eval()  # eval: forward and step see the same network


@pytest.mark.parametrize("name", ["bag_of_words", *DECODERS])
@pytest.mark.parametrize("M", [None, 3])
def test_forward_step_and_losses_agree(name, M):
    """forward's scores are the step API's, word by word; weighted_loss with weights = mask is the
    cross-entropy of forward's scores summed over words and divided by N; per-word weights equal to
    their caption's weight give the per-caption loss."""
    model = make_decoder(name)
    assert isinstance(model, Captioner)
    N = 3
    features = torch.randn(N, 4, dtype=torch.float64) if M is None else torch.randn(N, M, 4, dtype=torch.float64)
    captions = torch.tensor([ids("<START> a cat sat <END>", 7), ids("<START> dog <END>", 7),
                             ids("<START> a dog ran sat <END>", 7)])  # fmt: skip
    scores = model(features, captions[:, :-1])  # (N, T, V)
    state, stepped = model.initial_state(features), []
    for t in range(captions.shape[1] - 1):
        step_scores, state = model.step(captions[:, t], state)
        stepped.append(step_scores)
    torch.testing.assert_close(scores, torch.stack(stepped, 1), rtol=1e-10, atol=1e-10)

    mask = captions[:, 1:] != VOCAB["<NULL>"]
    log_probs = torch.log_softmax(scores, 2).gather(2, captions[:, 1:, None])[..., 0]  # (N, T)
    weights = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    expected = -(weights[:, None] * log_probs * mask).sum() / N
    torch.testing.assert_close(model.weighted_loss(features, captions, mask, weights), expected)
    per_word = weights[:, None].expand(mask.shape).contiguous()
    torch.testing.assert_close(model.weighted_loss(features, captions, mask, per_word), expected)
    unit = -(log_probs * mask).sum() / N
    T = mask.shape[1]
    torch.testing.assert_close(model.loss(features, captions), unit / T if name == "transformer" else unit)
