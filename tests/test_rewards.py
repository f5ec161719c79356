"""CiderD rewards on word ids against pycocoevalcap's Cider on the same captions as text."""

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from caption_torch.metrics.cider import CiderD, Sentences
from caption_torch.metrics.coco import caption_text

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


def test_document_frequencies_count_images_whose_captions_are_spread_over_the_corpus():
    """cs231n's training captions are not grouped by image: each n-gram's df is still its number of images."""
    references, _ = random_corpus(images=30, samples=1, seed=4)
    captions = [r for refs in references for r in refs]
    image = np.repeat(np.arange(30), [len(refs) for refs in references])
    order = np.random.default_rng(4).permutation(len(captions))
    shuffled = CiderD(Sentences.from_lists([captions[i] for i in order]), image[order], V)
    for n, (keys, df) in enumerate(shuffled.document_frequency, start=1):
        images_of = {}
        for i, refs in enumerate(references):
            for r in refs:
                for start in range(len(r) - n + 1):
                    key = 0
                    for word in r[start : start + n]:
                        key = key * V + word
                    images_of.setdefault(key, set()).add(i)
        assert keys.tolist() == sorted(images_of)
        assert df.tolist() == [len(images_of[key]) for key in sorted(images_of)]


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
    from caption_torch.metrics.cider import CorpusCiderD

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


# --------------------------------------------------------------------------- #
# Document frequencies cached beside the dataset
# --------------------------------------------------------------------------- #


def saved_and_loaded(tmp_path, fingerprint="abc"):
    references, _ = random_corpus(images=20, samples=1, seed=4)
    reward = CiderD(*flat(references), V)
    reward.save(tmp_path / "df.npz", fingerprint)
    return reward, CiderD.load(tmp_path / "df.npz", fingerprint)


def test_saved_document_frequencies_score_the_same(tmp_path):
    reward, loaded = saved_and_loaded(tmp_path)
    references, candidates = random_corpus(images=20, samples=2, seed=5)
    args = (Sentences.from_lists(candidates), np.repeat(np.arange(20), 2), *flat(references))
    np.testing.assert_array_equal(loaded.scores(*args), reward.scores(*args))
    assert [p.name for p in tmp_path.iterdir()] == ["df.npz"]  # no partial file is left


def test_a_cache_of_another_corpus_or_a_broken_file_is_not_used(tmp_path):
    saved_and_loaded(tmp_path, fingerprint="abc")
    assert CiderD.load(tmp_path / "df.npz", "another corpus") is None
    assert CiderD.load(tmp_path / "missing.npz", "abc") is None
    assert CiderD.load(tmp_path / "df.npz", "abc", max_order=3) is None  # other settings
    whole = (tmp_path / "df.npz").read_bytes()
    (tmp_path / "df.npz").write_bytes(whole[: len(whole) // 2])  # truncated, as by a full disk
    assert CiderD.load(tmp_path / "df.npz", "abc") is None
    (tmp_path / "df.npz").write_bytes(b"not an npz file")
    assert CiderD.load(tmp_path / "df.npz", "abc") is None


def test_a_failed_save_leaves_no_partial_file(tmp_path):
    references, _ = random_corpus(images=5, samples=1, seed=6)
    reward = CiderD(*flat(references), V)
    (tmp_path / "df.npz").mkdir()  # the rename onto it fails
    with pytest.raises(OSError):
        reward.save(tmp_path / "df.npz", "abc")
    assert [p.name for p in tmp_path.iterdir()] == ["df.npz"]


def reward_of(folder):
    """The self-critical reward of a data folder's training captions, as train.py builds it."""
    from caption_torch.data.datamodule import CaptionDataModule
    from caption_torch.data.sources import open_source
    from caption_torch.training.self_critical import training_reward

    dm = CaptionDataModule(open_source(folder), batch_size=4)
    dm.setup("fit")
    return training_reward(dm.train_captions, dm.word_to_idx, dm.source.folder)


def test_the_reward_counts_document_frequencies_once_per_dataset(coco_folder, monkeypatch):
    from caption_torch.metrics import cider as rewards
    from caption_torch.training.self_critical import CIDER_CACHE_FILE

    first = reward_of(coco_folder)
    assert (coco_folder / CIDER_CACHE_FILE).is_file()
    counted = []
    monkeypatch.setattr(rewards.CiderD, "__init__", lambda *args: counted.append(args))
    second = reward_of(coco_folder)
    assert not counted and second.log_images == first.log_images
    for (keys, df), (first_keys, first_df) in zip(second.document_frequency, first.document_frequency):
        np.testing.assert_array_equal(keys, first_keys)
        np.testing.assert_array_equal(df, first_df)


def test_a_changed_dataset_counts_again_and_a_read_only_one_warns(coco_folder, monkeypatch):
    from conftest import write_coco_folder

    from caption_torch.training.self_critical import CIDER_CACHE_FILE

    before = reward_of(coco_folder)
    write_coco_folder(coco_folder, seed=1)  # other training captions in the same folder
    after = reward_of(coco_folder)
    assert after.log_images == before.log_images  # same number of images, other n-grams
    assert any(not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
               for a, b in zip(after.document_frequency, before.document_frequency))  # fmt: skip

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(CiderD, "save", refuse)
    (coco_folder / CIDER_CACHE_FILE).unlink()
    with pytest.warns(UserWarning, match="could not cache the CIDEr-D document frequencies"):
        assert reward_of(coco_folder).log_images == before.log_images


def test_word_ids_whose_keys_overflow_with_the_sentence_number_score_the_same():
    """Ids near 40,000: a 4-gram key (~2.6e18) times a caption's number leaves int64, so ngrams.pair_codes
    renumbers the keys before coding (sentence, key) pairs; the scores must not change."""
    references, candidates = random_corpus(images=12, samples=1, seed=5)
    shift = 40_000 - V
    refs, ref_image = flat([[[w + shift for w in r] for r in image_refs] for image_refs in references])
    shifted = Sentences.from_lists([[w + shift for w in c] for c in candidates])
    ours = CiderD(refs, ref_image, 40_000).scores(shifted, np.arange(12), refs, ref_image)
    np.testing.assert_allclose(ours, pycocoevalcap_scores(references, candidates), rtol=0, atol=1e-9)
