"""Caption metrics against pycocoevalcap (BLEU, ROUGE-L, CIDEr-D; METEOR is its jar), BLEU by hand, text helpers."""

import math
import random
import shutil
import types

import numpy as np
import pytest
import torch

from caption_torch.metrics.bleu import CocoBLEUScore, bleu_counts
from caption_torch.metrics.coco import (
    COCO_METRICS,
    bleu_scores,
    bleu_scores_per_image,
    caption_text,
    cider_d,
    cider_d_scores,
    evaluate_captions,
    meteor,
    meteor_unavailable,
    rouge_l,
    rouge_l_scores,
    strip_special,
)
from caption_torch.metrics.ngrams import Sentences, pair_codes

# --------------------------------------------------------------------------- #
# Text helpers
# --------------------------------------------------------------------------- #

IDX_TO_WORD = {0: "<NULL>", 1: "<START>", 2: "<END>", 3: "<UNK>", 4: "a", 5: "cat", 6: "mat"}


def test_caption_text_stops_at_end_and_drops_start_and_null():
    assert caption_text(torch.tensor([1, 4, 5, 0, 6, 2, 4, 5]), IDX_TO_WORD) == "a cat mat"
    assert caption_text([4, 3, 5, 2, 0, 0], IDX_TO_WORD) == "a <UNK> cat"  # <UNK> is a word
    assert caption_text(torch.tensor([2, 4, 5]), IDX_TO_WORD) == ""
    assert caption_text(torch.tensor([4, 4, 6]), IDX_TO_WORD) == "a a mat"  # no <END>: every word
    assert caption_text([1, 5, 2], [IDX_TO_WORD[i] for i in range(7)]) == "cat"  # cs231n's list of words
    with pytest.raises(ValueError, match="1-D"):
        caption_text(torch.zeros(2, 3, dtype=torch.long), IDX_TO_WORD)


def test_caption_text_takes_any_mapping_with_gaps_in_the_ids():
    sparse = {0: "<NULL>", 1: "<START>", 2: "<END>", 10: "a", 42: "cat"}
    assert caption_text(torch.tensor([1, 10, 42, 2, 0]), sparse) == "a cat"
    assert caption_text([10, 42], types.MappingProxyType(sparse)) == "a cat"  # any Mapping, not only dict
    with pytest.raises(ValueError, match="token id 7 is not in the vocabulary"):
        caption_text([10, 7], sparse)
    with pytest.raises(ValueError, match="token id 7 is not in the vocabulary"):
        caption_text([4, 7], [IDX_TO_WORD[i] for i in range(7)])


def test_strip_special_takes_strings_and_word_lists():
    assert strip_special("<START> a cat on a mat <END> <NULL> <NULL>") == "a cat on a mat"
    assert strip_special(["<START>", "a", "<END>", "cat"]) == "a"


# --------------------------------------------------------------------------- #
# BLEU against pycocoevalcap, by hand, and as a synchronised Metric
# --------------------------------------------------------------------------- #


def random_corpus(seed, num_images, vocabulary=8, refs=(1, 5), lengths=(0, 12)):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocabulary)]

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(*lengths)))

    candidates = [sentence() for _ in range(num_images)]
    references = [[sentence() for _ in range(rng.randint(*refs))] for _ in range(num_images)]
    return candidates, references


def pycocoevalcap_bleu(candidates, references):
    bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [candidate] for i, candidate in enumerate(candidates)}
    corpus, per_image = bleu.Bleu(4).compute_score(gts, res, verbose=0)
    return corpus, np.asarray(per_image).T  # (4,), (N, 4)


def test_bleu_by_hand():
    candidates = ["a cat on the mat", "a dog dog"]
    references = [["a cat is on the mat", "there is a cat on the mat"], ["a dog runs", "the dog runs fast"]]
    # Clipped n-gram matches / candidate n-grams, image 1 + image 2:
    #   image 1: every n-gram of "a cat on the mat" is in some reference -> 5/5, 4/4, 3/3, 2/2
    #   image 2: unigrams a, dog, dog: "dog" clipped to 1 -> 2/3; bigrams "a dog", "dog dog" -> 1/2;
    #            trigram "a dog dog" -> 0/1; no 4-grams
    #   p1 = 7/8, p2 = 5/6, p3 = 3/4, p4 = 2/2
    # Lengths: candidates 5 + 3 = 8 words; closest references 6 (|5-6| < |5-7|) + 3 = 9,
    # so brevity penalty = exp(1 - 9/8). The smoothing constants move this by ~1e-9.
    p = [7 / 8, 5 / 6, 3 / 4, 1.0]
    brevity = math.exp(1 - 9 / 8)
    expected = {f"BLEU-{n}": brevity * math.prod(p[:n]) ** (1 / n) for n in range(1, 5)}
    scores = bleu_scores(candidates, references)
    assert scores.keys() == expected.keys()
    for key in expected:
        assert scores[key] == pytest.approx(expected[key], abs=1e-8)


def test_closest_reference_length_takes_the_shorter_on_a_tie():
    # Candidate of 3 words, references of 2 and 4 words: both 1 away; pycocoevalcap takes 2,
    # so there is no brevity penalty (a plain "first closest" would take 4 and apply one).
    scores = bleu_scores(["a cat sat"], [["a cat sat down", "a cat"]])
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-8)
    assert bleu_counts(["a cat sat"], [["a cat sat down", "a cat"]]).reference_length.tolist() == [2]


def test_an_order_without_matches_gives_a_tiny_bleu_not_zero():
    scores = bleu_scores(["a cat on", "the dog"], [["a cat sat on"], ["the big dog"]])
    assert scores["BLEU-2"] > 0.1  # "a cat" matches
    assert 0 < scores["BLEU-3"] < 1e-4 and 0 < scores["BLEU-4"] < 1e-3  # no trigram does: smoothed, not 0


SMALL_BLEU_CORPORA = {
    "empty candidates": (["", ""], [["a cat"], ["a dog on a mat"]]),
    "empty references": (["a cat", "dog"], [[""], ["", "dog"]]),
    "one-word captions": (["cat", "a"], [["cat"], ["a", "cat"]]),
    "length ties": (["a cat sat", "a b c d"], [["a cat sat down", "a cat"], ["a b c d e f", "a b"]]),
}


@pytest.mark.parametrize("name", [*SMALL_BLEU_CORPORA, "small:repeated words", "small:empty and one-word captions"])
def test_bleu_equals_pycocoevalcap_on_small_corpora(name):
    candidates, references = SMALL_BLEU_CORPORA.get(name) or SMALL_CORPORA[name.removeprefix("small:")]
    expected, expected_per_image = pycocoevalcap_bleu(candidates, references)
    scores = bleu_scores(candidates, references)
    np.testing.assert_allclose([scores[f"BLEU-{n}"] for n in range(1, 5)], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(bleu_scores_per_image(candidates, references), expected_per_image, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 6])
def test_bleu_equals_pycocoevalcap_on_random_corpora(seed):
    # Lengths from 0: empty and one-word captions and references occur; few words: ties and clipping.
    candidates, references = random_corpus(seed, num_images=80, vocabulary=3 + seed % 2, lengths=(0, 9))
    # (seed 5 would have no 4-gram match: the small corpora cover that case)
    expected, expected_per_image = pycocoevalcap_bleu(candidates, references)
    assert expected[3] > 1e-3  # 4-grams match, so the comparison is not of two tiny numbers
    scores = bleu_scores(candidates, references)
    np.testing.assert_allclose([scores[f"BLEU-{n}"] for n in range(1, 5)], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(bleu_scores_per_image(candidates, references), expected_per_image, rtol=0, atol=1e-9)


@pytest.mark.parametrize("n_gram", [1, 4])
def test_bleu_metric_in_batches_and_shards_equals_one_corpus(n_gram):
    candidates, references = random_corpus(7, num_images=40, vocabulary=6)
    expected = bleu_scores(candidates, references)[f"BLEU-{n_gram}"]
    batched = CocoBLEUScore(n_gram=n_gram)
    for start in range(0, 40, 7):
        batched.update(candidates[start : start + 7], references[start : start + 7])
    assert float(batched.compute()) == pytest.approx(expected, abs=1e-12)
    # Two processes each see half the images; their summed states (what DDP's "sum" does) are one corpus.
    shards = [CocoBLEUScore(n_gram=n_gram) for _ in range(2)]
    shards[0].update(candidates[::2], references[::2])
    shards[1].update(candidates[1::2], references[1::2])
    merged = CocoBLEUScore(n_gram=n_gram)
    for state in ("matches", "ngrams", "candidate_length", "reference_length"):
        setattr(merged, state, getattr(shards[0], state) + getattr(shards[1], state))
    merged._update_count = 1
    assert float(merged.compute()) == pytest.approx(expected, abs=1e-12)
    assert float(shards[0].compute()) != pytest.approx(expected, abs=1e-6)  # one shard alone is not the corpus


def test_bleu_metric_refuses_orders_outside_one_to_four():
    with pytest.raises(ValueError, match="n_gram must be in 1..4"):
        CocoBLEUScore(n_gram=5)


# --------------------------------------------------------------------------- #
# CIDEr-D against pycocoevalcap
# --------------------------------------------------------------------------- #

SMALL_CORPORA = {
    "repeated words": (
        ["a a a a cat", "the the dog"],
        [["a a cat", "a cat on a mat"], ["the dog", "a dog and the dog", "the dog the dog"]],
    ),
    "candidate longer and shorter": (
        ["a cat sitting on a red mat in a big sunny room", "dog", "a cat on a mat"],
        [["a cat on a mat", "cat on mat"], ["a dog runs on the grass", "the dog"], ["a cat on a mat", "a cat"]],
    ),
    "no overlap": (
        ["zebra giraffe elephant", "a cat on a mat"],
        [["a cat on a mat", "the cat"], ["a cat on a mat", "a kitten on the mat"]],
    ),
    "empty and one-word captions": (
        ["", "cat", "a cat"],
        [["a cat"], ["cat", "a cat on a mat"], [""]],
    ),
    "one image": (["a cat on a mat"], [["a cat on a mat", "a cat"]]),
}


def pycocoevalcap_cider(candidates, references, sigma=6.0):
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [candidate] for i, candidate in enumerate(candidates)}
    mean, per_image = cider.Cider(sigma=sigma).compute_score(gts, res)
    return float(mean), np.asarray(per_image)


@pytest.mark.parametrize("name", SMALL_CORPORA)
def test_cider_d_equals_pycocoevalcap_on_small_corpora(name):
    candidates, references = SMALL_CORPORA[name]
    expected_mean, expected = pycocoevalcap_cider(candidates, references)
    ours = cider_d_scores(candidates, references)
    assert ours.shape == (len(candidates),)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert cider_d(candidates, references) == pytest.approx(expected_mean, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sigma", [6.0, 2.0])
def test_cider_d_equals_pycocoevalcap_on_random_corpora(seed, sigma):
    # Few words so that n-grams repeat within captions and across images (some in every
    # image, i.e. idf = 0); lengths from 0 so that empty captions occur.
    candidates, references = random_corpus(seed, num_images=60, vocabulary=6 + seed)
    expected_mean, expected = pycocoevalcap_cider(candidates, references, sigma=sigma)
    assert expected_mean > 0  # the corpus has matches, so the comparison means something
    np.testing.assert_allclose(cider_d_scores(candidates, references, sigma=sigma), expected, rtol=0, atol=1e-6)


def test_cider_d_equals_pycocoevalcap_on_a_larger_corpus():
    candidates, references = random_corpus(99, num_images=1500, vocabulary=300, refs=(5, 5), lengths=(6, 14))
    expected_mean, expected = pycocoevalcap_cider(candidates, references)
    np.testing.assert_allclose(cider_d_scores(candidates, references), expected, rtol=0, atol=1e-6)


def test_cider_d_prefers_the_matching_caption():
    references = [
        ["a cat on a mat", "a cat sitting on a mat"],
        ["a dog in the park", "the dog runs in a park"],
        ["two birds on a wire", "birds sitting on a wire"],
    ]
    perfect = cider_d_scores(["a cat on a mat", "a dog in the park", "two birds on a wire"], references)
    swapped = cider_d_scores(["a dog in the park", "two birds on a wire", "a cat on a mat"], references)
    assert (perfect > swapped).all()
    assert (swapped < 0.5).all() and (perfect > 1.0).all()


# --------------------------------------------------------------------------- #
# ROUGE-L against pycocoevalcap, METEOR through its jar
# --------------------------------------------------------------------------- #


def pycocoevalcap_rouge(candidates, references):
    rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [candidate] for i, candidate in enumerate(candidates)}
    mean, per_image = rouge.Rouge().compute_score(gts, res)
    return float(mean), np.asarray(per_image)


@pytest.mark.parametrize("name", [*SMALL_CORPORA, *SMALL_BLEU_CORPORA])
def test_rouge_l_equals_pycocoevalcap_on_small_corpora(name):
    candidates, references = SMALL_CORPORA.get(name) or SMALL_BLEU_CORPORA[name]
    expected_mean, expected = pycocoevalcap_rouge(candidates, references)
    np.testing.assert_allclose(rouge_l_scores(candidates, references), expected, rtol=0, atol=1e-9)
    assert rouge_l(candidates, references) == pytest.approx(expected_mean, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_rouge_l_equals_pycocoevalcap_on_random_corpora(seed):
    # Candidates longer and shorter than their references, so both orders of the LCS table run.
    candidates, references = random_corpus(seed, num_images=80, vocabulary=4 + seed, lengths=(0, 14))
    expected_mean, expected = pycocoevalcap_rouge(candidates, references)
    assert 0.2 < expected_mean < 0.9
    np.testing.assert_allclose(rouge_l_scores(candidates, references), expected, rtol=0, atol=1e-9)


def test_rouge_l_by_hand():
    # LCS("a cat sat on a mat", "the cat on the mat") = "cat on mat" = 3: P = 3/6, R = 3/5.
    precision, recall = 3 / 6, 3 / 5
    expected = (1 + 1.2**2) * precision * recall / (recall + 1.2**2 * precision)
    assert rouge_l_scores(["a cat sat on a mat"], [["the cat on the mat", "dog"]])[0] == pytest.approx(expected)


needs_java = pytest.mark.skipif(meteor_unavailable() is not None, reason=f"METEOR cannot run: {meteor_unavailable()}")


@needs_java
def test_meteor_runs_pycocoevalcaps_jar():
    candidates = ["a cat on a mat", "a dog runs", "zebra"]
    references = [["a cat on a mat"], ["a dog runs on the grass", "the dog"], ["a cat"]]
    meteor_module = pytest.importorskip("pycocoevalcap.meteor.meteor")
    gts, res = dict(enumerate(references)), {i: [c] for i, c in enumerate(candidates)}
    expected, _ = meteor_module.Meteor().compute_score(gts, res)
    assert 0.2 < expected < 0.9
    assert meteor(candidates, references) == pytest.approx(expected, abs=1e-12)


def test_evaluate_captions_gives_the_coco_table_and_a_notice_without_java(monkeypatch):
    candidates, references = SMALL_CORPORA["candidate longer and shorter"]
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no java anywhere
    notices = []
    scores = evaluate_captions(candidates, references, notice=notices.append)
    assert tuple(scores) == COCO_METRICS
    assert scores["METEOR"] is None and notices == ["METEOR skipped: java is not on the PATH " +
                                                    "(e.g. apt-get install default-jre-headless)"]  # fmt: skip
    assert scores["CIDEr-D"] == pytest.approx(cider_d(candidates, references))
    assert scores["BLEU-4"] == pytest.approx(bleu_scores(candidates, references)["BLEU-4"])
    assert scores["ROUGE-L"] == pytest.approx(rouge_l(candidates, references))
    assert evaluate_captions(candidates, references, with_meteor=False, notice=notices.append)["METEOR"] is None
    assert len(notices) == 1  # not asked for: no notice


@pytest.mark.parametrize(
    "candidates, references, message",
    [
        (["a cat"], [["a cat"], ["a dog"]], "reference lists"),
        (["a cat", "a dog"], [["a cat"], []], r"references\[1\]"),
        ("a cat", [["a cat"]], "list of strings"),
        ([], [], "empty"),
    ],
)
def test_metrics_reject_malformed_corpora(candidates, references, message):
    with pytest.raises(ValueError, match=message):
        cider_d(candidates, references)
    with pytest.raises(ValueError, match=message):
        bleu_scores(candidates, references)
    with pytest.raises(ValueError, match=message):
        rouge_l_scores(candidates, references)


def test_pair_codes_keep_the_pairs_order_when_keys_must_be_renumbered():
    group, key = np.array([0, 1, 1, 0, 2, 1]), np.array([2**61, 5, 2**61, 5, 7, 5])
    coded = pair_codes((group, key), (np.array([2]), np.array([2**61])))
    assert coded.key_values is not None  # 3 groups x 2^61 does not fit an int64
    ours, other = coded.codes
    assert sorted(zip(group.tolist(), key.tolist())) == [tuple(map(int, p)) for p in zip(*coded.split(np.sort(ours)))]
    assert other[0] not in ours and ours[1] == ours[5]  # equal pairs, equal codes, across the arrays
    small = pair_codes((group, key % 8))
    assert small.key_values is None and small.codes[0].tolist() == (group * 8 + key % 8).tolist()


@pytest.mark.parametrize(
    "captions",
    [
        ["a cat  sat", "", " the\tcat a ", "sat", ""],
        ["a \x00 cat", "\x00", "cat\x00 a"],  # NUL as a word of its own, and inside one
        ["one"],
        [],
    ],
)
def test_sentences_from_text_number_words_by_first_appearance_caption_by_caption(captions):
    """from_text gives each caption's str.split() words, numbered in order of first appearance."""
    split = [caption.split() for caption in captions]
    numbers = {}
    for word in (w for words in split for w in words):
        numbers.setdefault(word, len(numbers))
    sentences, vocab_size = Sentences.from_text(captions)
    assert sentences.lengths.tolist() == [len(words) for words in split]
    assert sentences.words.tolist() == [numbers[w] for words in split for w in words]
    assert vocab_size == max(len(numbers), 1)


def test_the_registry_validates_what_evaluate_scores():
    """Each validation Metric of the registry, fed ids batch by batch, gives its corpus scorer's value on the text."""
    from caption_torch.metrics.registry import METRICS, VALIDATION_METRICS

    assert tuple(metric.name for metric in METRICS) == COCO_METRICS
    assert [(m.name, m.log_name) for m in VALIDATION_METRICS] == [
        ("BLEU-1", "val_bleu1"), ("BLEU-2", "val_bleu2"), ("BLEU-3", "val_bleu3"), ("BLEU-4", "val_bleu4"),
        ("CIDEr-D", "val_cider"),
    ]  # fmt: skip
    assert [m.name for m in METRICS if m.needs_java] == ["METEOR"]
    words = ["<NULL>", "<START>", "<END>", *(f"w{i}" for i in range(8))]
    model = types.SimpleNamespace(vocab_size=len(words), start_id=1, end_id=2, null_id=0)
    rng = np.random.default_rng(0)
    generated = torch.as_tensor(np.column_stack([rng.integers(3, 11, (6, 7)), np.full(6, 2)]))  # (6, 8) then <END>
    references = torch.full((6, 3, 9), -1)
    for image in range(6):
        for r in range(int(rng.integers(1, 4))):
            references[image, r] = torch.as_tensor([1, *rng.integers(3, 11, 6), 2, 0])
    candidates = [caption_text(row, words) for row in generated]
    texts = [[caption_text(ref, words) for ref in refs if ref[0] >= 0] for refs in references]
    for metric in VALIDATION_METRICS:
        accumulator = metric.validation(model)
        for batch in (slice(0, 4), slice(4, 6)):
            inputs = (generated[batch], references[batch]) if metric.on_ids else (candidates[batch], texts[batch])
            accumulator.update(*inputs)
        expected = metric.corpus(candidates, texts)[metric.name]
        assert 0 < expected and accumulator.compute().item() == pytest.approx(expected, abs=1e-9), metric.name
