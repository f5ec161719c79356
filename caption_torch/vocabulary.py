"""The vocabulary's special tokens and its one id -> word map.

cs231n's vocabulary is a ``word_to_idx`` dict. Ids need not be 0..V-1: the
RNN_Captioning notebook's own check builds a model on ``{<NULL>: 0, cat: 2, dog: 3}``,
so the way back from ids to words is a dict built here, never a list indexed by id.
"""

from __future__ import annotations

from collections.abc import Mapping

NULL, START, END, UNK = "<NULL>", "<START>", "<END>", "<UNK>"
# In cs231n's coco2014_vocab.json these hold ids 0-3, in this order.
SPECIAL_TOKENS = (NULL, START, END, UNK)


class IdToWord(dict):
    """``{id: word}`` that reads an id with no word (a row of a model built on gappy ids) as ``<UNK>``.

    A model over ``{<NULL>: 0, cat: 2, dog: 3}`` has V = 3 score rows, so it can emit id 1,
    which names no word; decoding shows it as ``<UNK>`` instead of failing.
    """

    def __missing__(self, idx: int) -> str:
        return UNK


def index_words(word_to_idx: Mapping[str, int]) -> IdToWord:
    """The inverse of ``word_to_idx``: ``{id: word}``, reading an id with no word as ``<UNK>``.

    Raises:
        ValueError: if two words share an id (the map back would be ambiguous).
    """
    idx_to_word = IdToWord()
    for word, idx in word_to_idx.items():
        if idx in idx_to_word:
            raise ValueError(f"word_to_idx gives id {idx} to both {idx_to_word[idx]!r} and {word!r}")
        idx_to_word[idx] = word
    return idx_to_word
