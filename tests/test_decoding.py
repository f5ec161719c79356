"""Decoders: greedy against a plain loop, beam search (K = 1, batching, exhaustive search), sampling, errors."""

import itertools
import math

import pytest
import torch

from caption_torch import CaptioningRNN
from caption_torch.models.captioner import Captioner
from caption_torch.models.decoding import (
    beam_search,
    caption_log_probs,
    decode,
    greedy_decode,
    temperature_sample,
)
from caption_torch.models.transformer import CaptioningTransformer

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "cat": 5, "dog": 6, "on": 7, "mat": 8}
NULL, END = 0, 2
CELL_TYPES = ["rnn", "lstm"]
DECODERS = [*CELL_TYPES, "transformer"]  # the strategies only use the one-word-at-a-time API


def make_model(cell_type, seed=0, vocab=VOCAB, dtype=torch.float32):
    """A small random model whose next word depends on the previous one.

    cs231n's initialisation (word vectors ~ N(0, 1/100), near-uniform softmax) makes
    every step almost the same distribution; larger word vectors and vocabulary
    weights make decoders disagree and make some captions end early.
    """
    torch.manual_seed(seed)
    if cell_type == "transformer":
        model = CaptioningTransformer(vocab, input_dim=8, wordvec_dim=16, num_heads=2, num_layers=1, max_length=30)
        with torch.no_grad():
            model.embedding.weight.normal_()
            model.output.weight.mul_(8.0)
        return model.to(dtype).eval()
    model = CaptioningRNN(vocab, input_dim=8, wordvec_dim=6, hidden_dim=16, cell_type=cell_type, dtype=dtype)
    with torch.no_grad():
        model.W_embed.normal_()
        model.W_vocab.mul_(3.0)
    return model


def features(n, seed=1, dtype=torch.float32):
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def mean_log_prob(model, feats, captions):
    return caption_log_probs(model, feats, captions, length_normalization=True)


def assert_null_after_end(captions):
    ended_before = torch.cumsum(captions == END, dim=1) - (captions == END).long() > 0  # (N, T)
    assert (captions[ended_before] == NULL).all()


# --------------------------------------------------------------------------- #
# Greedy and its equivalents
# --------------------------------------------------------------------------- #


def plain_greedy(model, feats, max_length):
    """Greedy decoding written out with torch ops on ``model.params``: no Function, no table, no early exit."""
    p = model.params
    h = feats @ p["W_proj"] + p["b_proj"]
    c = torch.zeros_like(h)
    words = torch.full((len(feats),), model.start_id)
    captions = torch.full((len(feats), max_length), NULL)
    ended = torch.zeros(len(feats), dtype=torch.bool)
    for t in range(max_length):
        a = p["W_embed"][words] @ p["Wx"] + h @ p["Wh"] + p["b"]
        if model.cell_type == "lstm":
            i, f, o, g = a.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            h = torch.tanh(a)
        words = (h @ p["W_vocab"] + p["b_vocab"]).argmax(dim=1)
        captions[:, t] = words.masked_fill(ended, NULL)
        ended |= words == END
    return captions


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("images", [3, 40])  # 3 * 12 < V: step by step; 40 * 12 > V: through the input table
def test_greedy_equals_a_plain_greedy_loop(cell_type, images):
    # float64: no near-tie between two words can flip an argmax between the two computations.
    model, feats = make_model(cell_type, seed=4, dtype=torch.float64), features(images, dtype=torch.float64)
    with torch.no_grad():
        expected = plain_greedy(model, feats, max_length=12)
    assert (expected == END).any(dim=1).any() and not (expected == END).any(dim=1).all()  # some end early
    assert len(set(map(tuple, expected.tolist()))) > 1
    assert torch.equal(greedy_decode(model, feats, max_length=12), expected)


@pytest.mark.parametrize("cell_type", DECODERS)
@pytest.mark.parametrize("length_normalization", [True, False])
def test_beam_size_one_equals_greedy(cell_type, length_normalization):
    model, feats = make_model(cell_type), features(32)
    greedy = greedy_decode(model, feats, max_length=12)
    beam = beam_search(model, feats, beam_size=1, max_length=12, length_normalization=length_normalization)
    assert torch.equal(beam, greedy)


@pytest.mark.parametrize("cell_type", DECODERS)
def test_tiny_temperature_equals_greedy(cell_type):
    model, feats = make_model(cell_type), features(32)
    generator = torch.Generator().manual_seed(0)
    sampled = temperature_sample(model, feats, temperature=1e-8, max_length=12, generator=generator)
    assert torch.equal(sampled, greedy_decode(model, feats, max_length=12))


# --------------------------------------------------------------------------- #
# Beam search
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("cell_type", DECODERS)
@pytest.mark.parametrize("beam_size", [2, 4])
def test_batched_beam_equals_one_image_at_a_time(cell_type, beam_size):
    model, feats = make_model(cell_type, seed=3), features(6)
    batched = beam_search(model, feats, beam_size=beam_size, max_length=10)
    one_by_one = torch.cat([beam_search(model, feats[i : i + 1], beam_size=beam_size, max_length=10) for i in range(6)])
    assert torch.equal(batched, one_by_one)


@pytest.mark.parametrize("cell_type", DECODERS)
def test_exhaustive_beam_finds_the_best_caption(cell_type):
    """With K >= V^L nothing is ever pruned, so beam search must return the caption of
    highest mean log-probability among all V^L, which is at least greedy's.

    (With a small K, beam search can lose to greedy on some image: greedy's prefix can
    fall out of the beam and the survivors end worse. That is beam search, not a bug;
    see test_small_beam_beats_greedy_on_average.)
    """
    # float64: the V^L-row batch and the 1-row batch then agree to ~1e-15, not ~1e-8.
    model, feats = make_model(cell_type, seed=5, dtype=torch.float64), features(3, dtype=torch.float64)
    V, L = len(VOCAB), 3
    every_caption = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (V^L, L)
    beam = beam_search(model, feats, beam_size=V**L, max_length=L)
    greedy = greedy_decode(model, feats, max_length=L)
    for i in range(len(feats)):
        image = feats[i : i + 1].expand(len(every_caption), -1)
        best = mean_log_prob(model, image, every_caption).max()
        found = mean_log_prob(model, feats[i : i + 1], beam[i : i + 1])[0]
        assert found == pytest.approx(best.item(), abs=1e-10)
        assert found >= mean_log_prob(model, feats[i : i + 1], greedy[i : i + 1])[0]
    assert_null_after_end(beam)


@pytest.mark.parametrize("cell_type", CELL_TYPES)  # the small random Transformer gives every image one caption
def test_small_beam_beats_greedy_on_average(cell_type):
    model, feats = make_model(cell_type, seed=7), features(64)
    greedy = mean_log_prob(model, feats, greedy_decode(model, feats, max_length=12))
    beam = mean_log_prob(model, feats, beam_search(model, feats, beam_size=3, max_length=12))
    assert (beam > greedy + 1e-9).any(), "beam search should find better captions than greedy for some images"
    assert beam.mean() > greedy.mean()
    assert (beam >= greedy - 1e-12).float().mean() >= 0.9


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_length_normalization_changes_the_ranking(cell_type):
    """Summed log-probabilities favour short captions; the mean does not."""
    model, feats = make_model(cell_type, seed=2), features(64)
    summed = beam_search(model, feats, beam_size=4, max_length=12, length_normalization=False)
    mean = beam_search(model, feats, beam_size=4, max_length=12, length_normalization=True)
    sum_score = caption_log_probs(model, feats, summed)
    assert (sum_score >= caption_log_probs(model, feats, mean) - 1e-9).float().mean() >= 0.9
    assert (mean != NULL).sum() > (summed != NULL).sum()


class ScriptedModel:
    """Stands in for a decoder with hand-written next-word probabilities.

    The "hidden state" is the caption so far, (N, t) word ids, so that beam search
    reorders it like any state; ``step`` looks the caption up in ``table`` (tuple of
    words -> {word: probability}) and falls back to uniform over <END>, a, b.
    """

    words = {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3, "b": 4}
    vocab_size, null_id, start_id, end_id = 5, 0, 1, 2
    # The generation loop itself is every real model's; only step() is scripted.
    generate, sample, check_max_length = Captioner.generate, Captioner.sample, Captioner.check_max_length

    def __init__(self, table):
        self.table = {tuple(self.words[w] for w in key.split()): probs for key, probs in table.items()}

    def check_can_generate(self):
        pass

    def initial_state(self, features):
        return (torch.zeros(features.shape[0], 0, dtype=torch.long),)

    def generation_context(self, steps):
        return None  # no weights: step() looks captions up in the table instead

    def step(self, words, state, context=None):
        prefix = torch.cat([state[0], words[:, None]], dim=1)  # (N, t + 1), <START> first
        uniform = {"<END>": 1 / 3, "a": 1 / 3, "b": 1 / 3}
        scores = torch.full((len(words), self.vocab_size), math.log(1e-9), dtype=torch.float64)
        for row, caption in enumerate(prefix[:, 1:].tolist()):
            for word, probability in self.table.get(tuple(caption), uniform).items():
                scores[row, self.words[word]] = math.log(probability)
        return scores, (prefix,)

    def ids(self, caption, length):
        ids = [self.words[w] for w in caption.split()]
        return torch.tensor([ids + [self.null_id] * (length - len(ids))])


def test_beam_finds_what_greedy_misses():
    # greedy: "a <END>", mean log-prob (ln .5 + ln .34) / 2 = -0.89; "b <END>": (ln .45 + ln .95) / 2 = -0.43
    model = ScriptedModel(
        {
            "": {"a": 0.5, "b": 0.45, "<END>": 0.05},
            "a": {"<END>": 0.34, "a": 0.33, "b": 0.33},
            "b": {"<END>": 0.95, "a": 0.025, "b": 0.025},
        }
    )
    feats = torch.zeros(1, 1)
    assert torch.equal(greedy_decode(model, feats, max_length=4), model.ids("a <END>", 4))
    assert torch.equal(beam_search(model, feats, beam_size=2, max_length=4), model.ids("b <END>", 4))


def test_beam_keeps_a_finished_caption_that_live_ones_pushed_out():
    # K = 2, mean log-probs:
    #   step 1: "b b" -0.47 and "a <END>" -0.60 (finished) are the best two
    #   step 2: "b b b" -0.54 and "b b a" -0.58 push "a <END>" out of the beam
    #   step 3: everything after them is uniform, ending at -0.68 or below: "a <END>" must win.
    model = ScriptedModel(
        {
            "": {"a": 0.5, "b": 0.4, "<END>": 0.1},
            "a": {"<END>": 0.6, "a": 0.2, "b": 0.2},
            "b": {"b": 0.98, "a": 0.01, "<END>": 0.01},
            "b b": {"b": 0.5, "a": 0.45, "<END>": 0.05},
        }
    )
    best = beam_search(model, torch.zeros(1, 1), beam_size=2, max_length=4)
    assert torch.equal(best, model.ids("a <END>", 4))


def test_length_normalization_by_hand():
    # Summed log-probs: "<END>" -1.05 beats "a b <END>" -1.14; means: "a b <END>" -0.38 beats "<END>" -1.05.
    model = ScriptedModel(
        {"": {"<END>": 0.35, "a": 0.65}, "a": {"b": 0.7, "<END>": 0.3}, "a b": {"<END>": 0.7, "a": 0.15, "b": 0.15}}
    )
    feats = torch.zeros(1, 1)
    summed = beam_search(model, feats, beam_size=2, max_length=5, length_normalization=False)
    assert torch.equal(summed, model.ids("<END>", 5))
    assert torch.equal(beam_search(model, feats, beam_size=2, max_length=5), model.ids("a b <END>", 5))


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_first_word_frequencies_follow_the_tempered_softmax(temperature):
    model = make_model("lstm")
    feats = features(1).expand(20000, -1)
    generator = torch.Generator().manual_seed(0)
    first = temperature_sample(model, feats, temperature, max_length=1, generator=generator)[:, 0]
    frequencies = torch.bincount(first, minlength=len(VOCAB)).double() / len(first)
    scores, _ = model.step(torch.tensor([1]), model.initial_state(features(1)))
    expected = torch.softmax(scores[0].double() / temperature, dim=0)
    assert torch.allclose(frequencies, expected, atol=0.015)


def test_sampling_is_reproducible_with_a_generator_and_differs_from_greedy():
    model, feats = make_model("rnn"), features(32)
    draw = lambda: temperature_sample(model, feats, 1.0, 12, torch.Generator().manual_seed(4))  # noqa: E731
    assert torch.equal(draw(), draw())
    assert not torch.equal(draw(), greedy_decode(model, feats, 12))


# --------------------------------------------------------------------------- #
# Format, scoring, dispatch, errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("cell_type", DECODERS)
@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_output_format(cell_type, method):
    model, feats = make_model(cell_type, seed=5), features(40)  # a seed where every method ends some captions
    captions = decode(model, feats, method, beam_size=3, max_length=9, generator=torch.Generator().manual_seed(0))
    assert captions.shape == (40, 9) and captions.dtype == torch.long
    assert (captions[:, 0] != NULL).any()
    has_end = (captions == END).any(dim=1)
    assert has_end.any(), "some captions should end before max_length for this check to mean anything"
    assert ((captions == END).sum(dim=1) <= 1).all()
    assert_null_after_end(captions)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_caption_log_probs_match_the_training_loss(cell_type):
    model, feats = make_model(cell_type), features(5)
    captions = torch.tensor(
        [[4, 5, 7, 4, 8, 2], [6, 2, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4], [3, 2, 0, 0, 0, 0], [8, 7, 6, 5, 2, 0]]
    )
    total = caption_log_probs(model, feats, captions)
    with_start = torch.cat([torch.ones(5, 1, dtype=torch.long), captions], dim=1)
    # loss = -(sum of log-probabilities of non-<NULL> targets) / N
    assert total.sum().item() == pytest.approx(-5 * model.loss(feats, with_start).item(), rel=1e-5)
    lengths = torch.tensor([6, 2, 6, 2, 5])
    mean = caption_log_probs(model, feats, captions, length_normalization=True)
    assert torch.allclose(mean, total / lengths)


def test_decode_dispatches():
    model, feats = make_model("rnn"), features(8)
    assert torch.equal(decode(model, feats, "greedy", max_length=7), greedy_decode(model, feats, 7))
    assert torch.equal(decode(model, feats, "beam", beam_size=2, max_length=7), beam_search(model, feats, 2, 7))
    sampled = decode(model, feats, "sample", temperature=0.7, max_length=7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled, temperature_sample(model, feats, 0.7, 7, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="topk"), "method must be one of"),
        (dict(method="beam", beam_size=0), "beam_size"),
        (dict(method="greedy", beam_size=2.5), "beam_size"),
        (dict(method="sample", temperature=0.0), "temperature"),
        (dict(method="sample", temperature=-1.0), "temperature"),
        (dict(method="sample", temperature=float("nan")), "temperature"),
        (dict(method="greedy", max_length=0), "max_length"),
    ],
)
def test_decode_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decode(make_model("rnn"), features(2), **kwargs)


def test_decoders_reject_bad_arguments_directly():
    model, feats = make_model("lstm"), features(2)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, feats, beam_size=0)
    with pytest.raises(ValueError, match="temperature"):
        temperature_sample(model, feats, temperature=0)
    with pytest.raises(ValueError, match="max_length"):
        beam_search(model, feats, max_length=0)
    with pytest.raises(ValueError, match="features"):
        beam_search(model, torch.randn(2, 5))
    no_end = make_model("rnn", vocab={"<NULL>": 0, "<START>": 1, "a": 2})
    with pytest.raises(ValueError, match="<END>"):
        beam_search(no_end, torch.randn(2, 8))


def test_caption_log_probs_checks_features_then_captions():
    model = make_model("rnn")
    with pytest.raises(ValueError, match="features must be an \\(N, D\\) or \\(N, M, D\\) tensor"):
        caption_log_probs(model, features(2)[0], torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="captions must be an int64 \\(or int32\\) tensor of token ids"):
        caption_log_probs(model, features(2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="captions contains token id 99, outside the vocabulary"):
        caption_log_probs(model, features(2), torch.full((2, 3), 99))


def test_integer_arguments_may_be_numpy_integers():
    np = pytest.importorskip("numpy")
    model, feats = make_model("lstm"), features(2)
    torch.testing.assert_close(
        decode(model, feats, method="beam", beam_size=np.int64(2), max_length=np.int32(5)),
        decode(model, feats, method="beam", beam_size=2, max_length=5),
    )
    torch.testing.assert_close(model.sample(feats, np.int64(5)), model.sample(feats, 5))
