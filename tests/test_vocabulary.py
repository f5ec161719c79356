"""The one id -> word map, on a vocabulary whose ids are not 0..V-1.

cs231n's notebook builds a model on {<NULL>: 0, cat: 2, dog: 3}. With such ids a list
indexed by id decodes the wrong words; these tests take the same gappy vocabulary
through the LightningModule, the decoders and the scores.
"""

import pytest
import torch

from caption_torch.metrics.coco import caption_text, evaluate_captions
from caption_torch.models.decoding import decode
from caption_torch.models.registry import CaptionConfig
from caption_torch.training.system import CaptioningSystem
from caption_torch.vocabulary import UNK, index_words

# V = 5 score rows (ids 0-4): row 3 names no word, and "dog" (id 6) has no row.
GAPPY = {"<NULL>": 0, "<START>": 1, "<END>": 2, "cat": 4, "dog": 6}


def test_index_words_inverts_and_reads_rows_without_a_word_as_unk():
    idx_to_word = index_words(GAPPY)
    assert [idx_to_word[i] for i in (0, 1, 2, 4, 6)] == ["<NULL>", "<START>", "<END>", "cat", "dog"]
    assert idx_to_word[3] == UNK


def test_index_words_refuses_two_words_on_one_id():
    with pytest.raises(ValueError, match="gives id 2 to both 'cat' and 'dog'"):
        index_words({"<NULL>": 0, "cat": 2, "dog": 2})


def test_gappy_ids_through_the_system_decoders_and_scores():
    torch.manual_seed(0)
    system = CaptioningSystem(GAPPY, 4, CaptionConfig.of(wordvec_dim=6, hidden_dim=8, max_length=5))
    assert system.model.vocab_size == 5
    reference = torch.tensor([[1, 4, 2, 0]])  # <START> cat <END> <NULL>
    assert caption_text(reference[0], system.idx_to_word) == "cat"  # a list by sorted id would say "dog"

    features = torch.randn(3, 4)
    loss = system.model.loss(features, reference.expand(3, -1))
    assert torch.isfinite(loss)
    vocabulary_words = {"cat", UNK}  # what rows 3 and 4 decode to; <NULL>/<START>/<END> are stripped
    for method in ("greedy", "beam", "sample"):
        captions = decode(system.model, features, method, beam_size=2, max_length=5)
        assert captions.max() < system.model.vocab_size
        texts = [caption_text(row, system.idx_to_word) for row in captions]
        assert all(set(text.split()) <= vocabulary_words for text in texts), texts
        scores = evaluate_captions(texts, [["cat"]] * 3)
        cat_only = [text == "cat" for text in texts]
        assert (scores["BLEU-1"] == 1.0) == all(cat_only)
