"""Caption metrics: BLEU by hand and against torchmetrics, CIDEr-D against pycocoevalcap, text helpers."""

import math
import random

import numpy as np
import pytest
import torch
from torchmetrics.text import BLEUScore

from caption_torch.metrics import (
    bleu_scores,
    caption_text,
    cider_d,
    cider_d_scores,
    evaluate_captions,
    strip_special,
)

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


def test_strip_special_takes_strings_and_word_lists():
    assert strip_special("<START> a cat on a mat <END> <NULL> <NULL>") == "a cat on a mat"
    assert strip_special(["<START>", "a", "<END>", "cat"]) == "a"


# --------------------------------------------------------------------------- #
# BLEU
# --------------------------------------------------------------------------- #


def test_bleu_by_hand():
    candidates = ["a cat on the mat", "a dog dog"]
    references = [["a cat is on the mat", "there is a cat on the mat"], ["a dog runs", "the dog runs fast"]]
    # Clipped n-gram matches / candidate n-grams, image 1 + image 2:
    #   image 1: every n-gram of "a cat on the mat" is in some reference -> 5/5, 4/4, 3/3, 2/2
    #   image 2: unigrams a, dog, dog: "dog" clipped to 1 -> 2/3; bigrams "a dog", "dog dog" -> 1/2;
    #            trigram "a dog dog" -> 0/1; no 4-grams
    #   p1 = 7/8, p2 = 5/6, p3 = 3/4, p4 = 2/2
    # Lengths: candidates 5 + 3 = 8 words; closest references 6 (|5-6| < |5-7|) + 3 = 9,
    # so brevity penalty = exp(1 - 9/8).
    p = [7 / 8, 5 / 6, 3 / 4, 1.0]
    brevity = math.exp(1 - 9 / 8)
    expected = {f"BLEU-{n}": brevity * math.prod(p[:n]) ** (1 / n) for n in range(1, 5)}
    scores = bleu_scores(candidates, references)
    assert scores.keys() == expected.keys()
    for key in expected:
        assert scores[key] == pytest.approx(expected[key], abs=1e-6)


def test_bleu_is_zero_from_the_first_order_without_matches():
    scores = bleu_scores(["a cat on", "the dog"], [["a cat sat on"], ["the big dog"]])
    assert scores["BLEU-1"] > 0 and scores["BLEU-2"] > 0  # "a cat" matches
    assert scores["BLEU-3"] == 0 and scores["BLEU-4"] == 0  # no trigram does


def test_bleu_of_only_empty_candidates_is_zero_like_torchmetrics():
    # A model that emits <END> first: no candidate words at all (a division by zero before).
    candidates, references = ["", ""], [["a cat"], ["a dog on a mat"]]
    scores = bleu_scores(candidates, references)
    assert scores == {f"BLEU-{n}": 0.0 for n in range(1, 5)}
    assert float(BLEUScore(n_gram=4)(candidates, references)) == 0.0


def random_corpus(seed, num_images, vocabulary=8, refs=(1, 5), lengths=(0, 12)):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocabulary)]

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(*lengths)))

    candidates = [sentence() for _ in range(num_images)]
    references = [[sentence() for _ in range(rng.randint(*refs))] for _ in range(num_images)]
    return candidates, references


@pytest.mark.parametrize("seed", range(4))
def test_bleu_orders_agree_with_one_torchmetrics_metric_per_order(seed):
    candidates, references = random_corpus(seed, 30, lengths=(2, 10))
    scores = bleu_scores(candidates, references)
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(float(BLEUScore(n_gram=n)(candidates, references)), abs=1e-6)


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


def test_evaluate_captions_returns_every_metric():
    candidates, references = SMALL_CORPORA["candidate longer and shorter"]
    scores = evaluate_captions(candidates, references)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"]
    assert scores["CIDEr-D"] == pytest.approx(cider_d(candidates, references))
    assert scores["BLEU-4"] == pytest.approx(bleu_scores(candidates, references)["BLEU-4"])


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
