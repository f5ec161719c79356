"""CiderD rewards on word ids against pycocoevalcap's Cider on the same captions as text."""

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from caption_torch.metrics import caption_text
from caption_torch.rewards import CiderD, Sentences

V = 30  # ids 0-3 are <NULL> <START> <END> <UNK>; words 4..29


def random_corpus(images, samples, seed):
    rng = np.random.default_rng(seed)

    def caption():  # 0 to 8 words from a small vocabulary, so n-grams repeat and match
        return [int(w) for w in rng.integers(4, V, rng.integers(0, 9))]

    references = [[caption() for _ in range(rng.integers(1, 6))] for _ in range(images)]
    candidates = [caption() for _ in range(images * samples)]
    return references, candidates


def text(caption):
    return " ".join(f"w{word}" for word in caption)


def pycocoevalcap_scores(references, candidates):
    """One candidate per image, document frequencies over these images' references."""
    gts = {i: [text(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [text(c)] for i, c in enumerate(candidates)}
    return np.array(Cider().compute_score(gts, res)[1])


def flat(references):
    return Sentences.from_lists([r for refs in references for r in refs]), np.repeat(
        np.arange(len(references)), [len(refs) for refs in references]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocoevalcap_with_several_samples_per_image(seed):
    references, candidates = random_corpus(images=25, samples=3, seed=seed)
    candidates[0], candidates[4] = [], [7]  # an empty and a one-word caption
    refs, ref_image = flat(references)
    order = np.random.default_rng(seed).permutation(len(candidates))  # samples need not be grouped by image
    candidate_image = np.repeat(np.arange(25), 3)[order]
    ours = CiderD(refs, ref_image, V).scores(
        Sentences.from_lists([candidates[i] for i in order]), candidate_image, refs, ref_image
    )
    for k in range(3):
        kth = [candidates[3 * i + k] for i in range(25)]
        expected = pycocoevalcap_scores(references, kth)
        np.testing.assert_allclose(ours[np.argsort(order)][k::3], expected, rtol=0, atol=1e-9)


def test_document_frequencies_come_from_the_corpus_not_the_batch():
    """Scoring 10 images with df from 40: pycocoevalcap run on all 40 gives those 10 the same scores."""
    references, candidates = random_corpus(images=40, samples=1, seed=3)
    corpus, corpus_image = flat(references)
    batch_refs, batch_image = flat(references[:10])
    reward = CiderD(corpus, corpus_image, V)
    ours = reward.scores(Sentences.from_lists(candidates[:10]), np.arange(10), batch_refs, batch_image)
    np.testing.assert_allclose(ours, pycocoevalcap_scores(references, candidates)[:10], rtol=0, atol=1e-9)
    own_df = CiderD(batch_refs, batch_image, V).scores(
        Sentences.from_lists(candidates[:10]), np.arange(10), batch_refs, batch_image
    )
    assert np.abs(own_df - ours).max() > 1e-3  # the corpus changes the scores


def test_sentences_from_ids_keep_the_words_caption_text_keeps():
    idx_to_word = {0: "<NULL>", 1: "<START>", 2: "<END>", 3: "<UNK>", **{i: f"w{i}" for i in range(4, V)}}
    ids = torch.tensor([[1, 5, 6, 2, 0, 0], [7, 0, 8, 3, 9, 9], [2, 5, 5, 0, 0, 0], [1, 1, 4, 2, 4, 2]])
    sentences = Sentences.from_ids(ids, end_id=2, skipped_ids=(0, 1))
    words = np.split(sentences.words, np.cumsum(sentences.lengths)[:-1])
    expected = [caption_text(row, idx_to_word) for row in ids]
    assert [" ".join(idx_to_word[int(w)] for w in row) for row in words] == expected


def test_refusals():
    refs, ref_image = flat([[[4, 5]], [[6]]])
    with pytest.raises(ValueError, match="do not fit an int64 key"):
        CiderD(refs, ref_image, vocab_size=100_000)
    with pytest.raises(ValueError, match="captions but 1 image numbers"):
        CiderD(refs, ref_image[:1], V)
    with pytest.raises(ValueError, match="has no reference"):
        CiderD(refs, ref_image, V).scores(Sentences.from_lists([[4]]), np.array([2]), refs, ref_image)


def test_corpus_cider_d_metric_equals_pycocoevalcap_and_merges_shards():
    """Val CIDEr-D: pycocoevalcap's corpus score on the same captions, and two shards' states equal one run's."""
    from caption_torch.rewards import CorpusCiderD

    references, candidates = random_corpus(images=12, samples=1, seed=4)
    R = max(len(refs) for refs in references)
    refs = torch.full((12, R, 11), -1, dtype=torch.long)  # <START> words <END> <NULL>..., -1 rows for none
    for i, image_refs in enumerate(references):
        for r, words in enumerate(image_refs):
            refs[i, r] = torch.tensor([1, *words, 2] + [0] * (9 - len(words)))
    generated = torch.tensor([c + [2] + [0] * (9 - len(c)) for c in candidates])  # (12, 10): words <END> <NULL>...
    whole, first, second = (CorpusCiderD(V, end_id=2, skipped_ids=(1, 0)) for _ in range(3))
    whole.update(generated, refs)
    first.update(generated[:5], refs[:5])
    second.update(generated[5:], refs[5:])
    first.merge_state(second)
    expected = pycocoevalcap_scores(references, candidates).mean()
    assert whole.compute().item() == pytest.approx(expected, abs=1e-9)
    assert first.compute().item() == pytest.approx(whole.compute().item(), abs=1e-12)
