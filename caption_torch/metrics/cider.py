"""CIDEr-D, one implementation on word ids: self-critical rewards, validation, and plain text through an adapter.

:class:`CiderD` counts n-gram document frequencies once over a corpus of reference sets
and then scores any captions against their images' references. Its three users differ
only in that corpus:

- self-critical rewards: thousands of sampled captions per epoch, document frequencies from
  the whole training set, counted once (and cached beside the dataset);
- :class:`CorpusCiderD` (validation) and :func:`cider_d_scores` (plain text, the COCO
  evaluation), through :func:`corpus_scores`: document frequencies from the references of
  the images scored, as pycocoevalcap's ``Cider`` takes them. :func:`cider_d_scores` numbers
  the words of the text (:meth:`Sentences.from_text`) and calls the same core.

All captions of a batch are scored at once: n-grams are int64 keys (:mod:`.ngrams`) and every
join (candidate n-gram with reference n-gram, n-gram with its document frequency) is a sort
and a ``searchsorted``, except where the references are the corpus itself
(:func:`corpus_scores`): the sort that counts the document frequencies
(:func:`document_frequencies`) numbers each reference n-gram too, and its df is read by
index. Per candidate c of image i, with references r_1..r_m of that image
(the formula of pycocoevalcap's ``Cider``):

    CIDEr-D(c) = 10 / m * sum_j mean_{n=1..4} [ sum_g min(c_g, r_g) r_g idf_g^2 / (|c|_n |r_j|_n) ]
                 * exp(-(len(c) - len(r_j))^2 / (2 sigma^2)),    idf_g = log(images) - log(max(1, df_g))

with df_g the number of the corpus's images whose references contain g (candidates do not
count), c_g and r_g the n-gram's counts, and |c|_n the norm of the count * idf vector of
c's n-grams (n-grams absent from every reference count there with df = 1).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from caption_torch.metrics.ngrams import (
    NgramCounts,
    Sentences,
    check_corpus,
    check_key_range,
    ngram_counts,
    pair_codes,
    reference_layout,
)

__all__ = ["CiderD", "CorpusCiderD", "Sentences", "cider_d", "cider_d_scores", "corpus_fingerprint", "corpus_scores"]

SIGMA = 6.0  # CIDEr-D's length penalty width
MAX_ORDER = 4  # n-grams of orders 1..4
CACHE_FORMAT = 1  # of CiderD.save's files; a new n-gram key or file layout takes a new number


class CiderD:
    """CIDEr-D of captions against their images' references, with document frequencies counted once over a
    corpus of reference sets (the training split's for rewards, the scored images' own for a corpus score).

    Args:
        corpus: the references of every image of the corpus (e.g. the training split): image i's
            captions are ``corpus.sentences`` entries whose ``corpus_image`` is i.
        corpus_image: (R,) the image of each corpus caption, in [0, number of images).
        vocab_size: V, one more than the largest word id.
        sigma: width of the gaussian length penalty (CIDEr-D's 6).
        max_order: n-grams of orders 1..max_order.
        corpus_grams: ``ngram_counts(corpus, max_order, vocab_size)`` if the caller has them already.
    """

    def __init__(
        self, corpus: Sentences, corpus_image: np.ndarray, vocab_size: int, sigma: float = SIGMA,
        max_order: int = MAX_ORDER, corpus_grams: list[NgramCounts] | None = None,
    ) -> None:  # fmt: skip
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        check_key_range(vocab_size, max_order)
        corpus_image = np.asarray(corpus_image, dtype=np.int64)
        if len(corpus_image) != len(corpus) or len(corpus) == 0:
            raise ValueError(f"the corpus has {len(corpus)} captions but {len(corpus_image)} image numbers")
        self.vocab_size, self.sigma, self.max_order = vocab_size, sigma, max_order
        self.log_images = float(np.log(len(np.unique(corpus_image))))
        # Document frequency: in how many images' reference sets each n-gram occurs.
        self.document_frequency = []  # per order: (sorted distinct keys, their df)
        for grams in corpus_grams or ngram_counts(corpus, max_order, vocab_size):
            known, df, _ = document_frequencies(grams, corpus_image)
            self.document_frequency.append((known, df))

    def save(self, path: str | os.PathLike, fingerprint: str) -> None:
        """Write the document frequencies to ``path`` (.npz), tagged with the corpus's ``fingerprint``.

        The file appears whole or not at all (written to a fresh file beside it, then renamed),
        so processes that read it while others write it see either nothing or all of one.
        """
        path = Path(path)
        arrays = {f"keys{order}": keys for order, (keys, _) in enumerate(self.document_frequency, start=1)}
        arrays.update({f"df{order}": df for order, (_, df) in enumerate(self.document_frequency, start=1)})
        settings = np.array([self.vocab_size, self.max_order], dtype=np.int64)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, fingerprint=np.array(fingerprint), settings=settings,
                         floats=np.array([self.sigma, self.log_images]), **arrays)  # fmt: skip
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):  # the write or the rename failed
                os.remove(partial)

    @classmethod
    def load(
        cls, path: str | os.PathLike, fingerprint: str, sigma: float = SIGMA, max_order: int = MAX_ORDER
    ) -> CiderD | None:
        """The rewards saved at ``path`` for a corpus of this ``fingerprint`` and these settings; None if the
        file is absent, of another corpus or settings, or unreadable (damaged, truncated)."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                reward = cls.__new__(cls)
                reward.vocab_size, reward.max_order = (int(v) for v in saved["settings"])
                reward.sigma, reward.log_images = (float(v) for v in saved["floats"])
                if str(saved["fingerprint"]) != fingerprint or (reward.sigma, reward.max_order) != (sigma, max_order):
                    return None
                reward.document_frequency = [
                    (saved[f"keys{order}"], saved[f"df{order}"]) for order in range(1, reward.max_order + 1)
                ]
                return reward
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def idf(self, order: int, keys: np.ndarray) -> np.ndarray:
        """log(images) - log(max(1, df)) of each n-gram key of the given order (1-based)."""
        known, df = self.document_frequency[order - 1]
        return self.log_images - np.log(lookup_df(known, df, keys).astype(np.float64))

    def scores(
        self, candidates: Sentences, candidate_image: np.ndarray, references: Sentences, reference_image: np.ndarray,
        reference_grams: list[NgramCounts] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """CIDEr-D of every candidate against all references of its image.

        Args:
            candidates: M captions; candidate m belongs to image ``candidate_image[m]``.
            references: R captions; reference r belongs to image ``reference_image[r]`` (numbers shared
                with ``candidate_image``; every candidate's image needs at least one reference).
            reference_grams: ``ngram_counts(references, ...)`` if the caller has them already.

        Returns:
            (M,) float64 scores.
        """
        candidate_grams = ngram_counts(candidates, self.max_order, self.vocab_size)
        reference_grams = reference_grams or ngram_counts(references, self.max_order, self.vocab_size)
        idf = [(self.idf(order, c.key), self.idf(order, r.key))
               for order, (c, r) in enumerate(zip(candidate_grams, reference_grams), start=1)]  # fmt: skip
        return _scores(candidates, candidate_image, candidate_grams, references, reference_image, reference_grams,
                       idf, self.sigma)  # fmt: skip


def document_frequencies(grams: NgramCounts, image_of_sentence: np.ndarray) -> tuple[np.ndarray, ...]:
    """In how many images' sentences each n-gram of ``grams`` occurs, and which n-gram each entry is.

    One stable sort of the entries by key, taken image by image, puts each n-gram's entries in a run
    ordered by image, so the images of an n-gram are the changes of image within its run; the sort
    also numbers every entry's n-gram, so the corpus's own entries need no lookup afterwards.

    Args:
        grams: E entries of one order (:func:`.ngrams.ngram_counts`) of S sentences.
        image_of_sentence: (S,) the image of each sentence (any order).

    Returns:
        ``(known, df, gram)``: the K distinct keys sorted (K,), the number of images whose sentences
        hold each (K,), and each entry's index in ``known`` (E,).
    """
    image = np.asarray(image_of_sentence, dtype=np.int64)[grams.sentence]
    by_image = None if len(image) < 2 or (image[1:] >= image[:-1]).all() else np.argsort(image, kind="stable")
    keys = grams.key if by_image is None else grams.key[by_image]
    order = np.argsort(keys, kind="stable") if by_image is None else by_image[np.argsort(keys, kind="stable")]
    sorted_keys, sorted_images = grams.key[order], image[order]
    new_key = np.ones(len(order), dtype=bool)
    new_key[1:] = sorted_keys[1:] != sorted_keys[:-1]
    new_image = new_key.copy()
    new_image[1:] |= sorted_images[1:] != sorted_images[:-1]
    gram_of_sorted = np.cumsum(new_key) - 1
    gram = np.empty(len(order), dtype=np.int64)
    gram[order] = gram_of_sorted
    df = np.bincount(gram_of_sorted[new_image], minlength=int(new_key.sum()))
    return sorted_keys[new_key], df, gram


def lookup_df(known: np.ndarray, df: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The document frequency of each of ``keys`` (Q,) among ``known`` (K,) sorted keys with ``df`` (K,);
    keys not known count 1 (CIDEr-D's max(1, df)). Returns (Q,) int64."""
    if len(known) == 0:
        return np.ones(len(keys), dtype=np.int64)
    where = np.searchsorted(known, keys).clip(max=len(known) - 1)
    return np.where(known[where] == keys, df[where], 1)


def _scores(
    candidates: Sentences, candidate_image: np.ndarray, candidate_grams: list[NgramCounts],
    references: Sentences, reference_image: np.ndarray, reference_grams: list[NgramCounts],
    idf: list[tuple[np.ndarray, np.ndarray]], sigma: float,
) -> np.ndarray:  # fmt: skip
    """The CIDEr-D core: :meth:`CiderD.scores` with the n-grams counted and ``idf[n - 1]`` the
    (candidate entries', reference entries') idf of order n, each (E_c,) and (E_r,) float64."""
    candidate_image = np.asarray(candidate_image, dtype=np.int64)
    reference_image = np.asarray(reference_image, dtype=np.int64)
    if len(candidate_image) != len(candidates) or len(reference_image) != len(references):
        raise ValueError("every candidate and every reference needs its image number")
    # Pairs (m, r) of a candidate and a reference of the same image, grouped by reference.
    images = int(max(candidate_image.max(initial=-1), reference_image.max(initial=-1))) + 1
    refs_per_image = np.bincount(reference_image, minlength=images)
    if len(candidates) and (refs_per_image[candidate_image] == 0).any():
        raise ValueError("a candidate's image has no reference")
    candidates_by_image = np.argsort(candidate_image, kind="stable")
    candidates_per_image = np.bincount(candidate_image, minlength=images)
    first_candidate_of_image = np.cumsum(candidates_per_image) - candidates_per_image
    pairs_per_reference = candidates_per_image[reference_image]  # (R,)
    first_pair_of_reference = np.cumsum(pairs_per_reference) - pairs_per_reference
    pair_reference = np.repeat(np.arange(len(references)), pairs_per_reference)
    rank = np.repeat(first_candidate_of_image[reference_image], pairs_per_reference) + _ranks_within(
        pairs_per_reference
    )
    pair_candidate = candidates_by_image[rank]
    one_pair_each = bool((pairs_per_reference == 1).all())

    similarity = np.zeros(len(pair_candidate))
    for c, r, (c_idf, r_idf) in zip(candidate_grams, reference_grams, idf):
        c_sentence, c_key, c_count = c.sentence, c.key, c.count
        r_sentence, r_key, r_count = r.sentence, r.key, r.count
        c_norm = np.sqrt(np.bincount(c_sentence, (c_count * c_idf) ** 2, minlength=len(candidates)))
        r_norm = np.sqrt(np.bincount(r_sentence, (r_count * r_idf) ** 2, minlength=len(references)))
        # Every reference entry once per pair of its reference; look the pair's candidate's count up.
        if one_pair_each:  # one candidate per image (a corpus score): nothing to repeat
            entry, pair = np.arange(len(r_key)), first_pair_of_reference[r_sentence]
        else:
            repeats = pairs_per_reference[r_sentence]
            entry = np.repeat(np.arange(len(r_key)), repeats)
            pair = np.repeat(first_pair_of_reference[r_sentence], repeats) + _ranks_within(repeats)
        # (candidate, key) codes; the candidates' are sorted, as their entries are by (sentence, key).
        c_lookup, wanted = pair_codes((c_sentence, c_key), (pair_candidate[pair], r_key[entry])).codes
        where = np.searchsorted(c_lookup, wanted).clip(max=max(len(c_lookup) - 1, 0))
        shared = c_lookup[where] == wanted if len(c_lookup) else np.zeros(len(wanted), dtype=bool)
        clipped = np.minimum(c_count[where[shared]], r_count[entry[shared]]) * r_count[entry[shared]]
        weights = clipped * r_idf[entry[shared]] ** 2
        dot = np.bincount(pair[shared], weights, minlength=len(pair_candidate)).astype(np.float64)
        denominator = c_norm[pair_candidate] * r_norm[pair_reference]
        similarity += np.divide(dot, denominator, out=np.zeros_like(dot), where=denominator != 0)
    delta = (candidates.lengths[pair_candidate] - references.lengths[pair_reference]).astype(np.float64)
    per_pair = similarity / len(idf) * np.exp(-(delta**2) / (2 * sigma**2))
    total = np.bincount(pair_candidate, per_pair, minlength=len(candidates))
    return 10.0 * total / refs_per_image[candidate_image]


def corpus_fingerprint(captions: np.ndarray, corpus_image: np.ndarray, *settings: object) -> str:
    """SHA-256 of a reference corpus (its caption ids and image numbers), the settings its rewards depend on
    and the format of :meth:`CiderD.save`'s files."""
    digest = hashlib.sha256(repr((CACHE_FORMAT, *settings)).encode())
    for array in (captions, corpus_image):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def corpus_scores(
    candidates: Sentences, references: Sentences, reference_image: np.ndarray, vocab_size: int,
    sigma: float = SIGMA, max_order: int = MAX_ORDER,
) -> np.ndarray:  # fmt: skip
    """CIDEr-D as pycocoevalcap computes it: candidate i is image i's, and the document frequencies are
    those of the references scored against.

    Args:
        candidates: N captions, one per image.
        references: R captions; reference r belongs to image ``reference_image[r]`` in [0, N), each image >= 1.
        vocab_size: V, one more than the largest word id.

    Returns:
        (N,) float64 scores.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    reference_image = np.asarray(reference_image, dtype=np.int64)
    if len(reference_image) != len(references) or len(references) == 0:
        raise ValueError(f"there are {len(references)} references but {len(reference_image)} image numbers")
    log_images = float(np.log(len(np.unique(reference_image))))
    reference_grams = ngram_counts(references, max_order, vocab_size)  # counted once, for both roles
    candidate_grams = ngram_counts(candidates, max_order, vocab_size)
    idf = []
    for c, r in zip(candidate_grams, reference_grams):
        # The references are the corpus: their entries' n-gram numbers index the document frequencies.
        known, df, gram = document_frequencies(r, reference_image)
        idf.append((log_images - np.log(lookup_df(known, df, c.key).astype(np.float64)),
                    log_images - np.log(df[gram].astype(np.float64))))  # fmt: skip
    return _scores(candidates, np.arange(len(candidates)), candidate_grams, references, reference_image,
                   reference_grams, idf, sigma)  # fmt: skip


def _ranks_within(repeats: np.ndarray) -> np.ndarray:
    """For runs of lengths ``repeats``: 0, 1, .., repeats[0]-1, 0, 1, .., repeats[1]-1, ..."""
    total = int(repeats.sum())
    run_starts = np.repeat(np.cumsum(repeats) - repeats, repeats)
    return np.arange(total) - run_starts


class CorpusCiderD(Metric):
    """Corpus CIDEr-D of greedy captions as pycocoevalcap computes it (document frequencies over the scored
    images' references), accumulated batch by batch and across processes.

    The states are flat word-id tensors concatenated over batches (and gathered over DDP ranks),
    so the score after a distributed validation equals one process's.

    Args:
        vocab_size: V; ids in [0, V).
        end_id: captions end at their first ``end_id``.
        skipped_ids: ids that are not words (<START>, <NULL>).
    """

    full_state_update = False

    def __init__(self, vocab_size: int, end_id: int, skipped_ids: Sequence[int]) -> None:
        super().__init__()
        self.vocab_size, self.end_id, self.skipped_ids = vocab_size, end_id, tuple(skipped_ids)
        for name in (
            "candidate_words",
            "candidate_lengths",
            "reference_words",
            "reference_lengths",
            "references_per_image",
        ):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, candidates: torch.Tensor, references: torch.Tensor) -> None:
        """candidates (B, L) generated ids; references (B, R, T) ``<START> ... <END>`` ids, rows of -1 for none."""
        present = references[:, :, 0] >= 0
        generated = Sentences.from_ids(candidates, self.end_id, self.skipped_ids)
        refs = Sentences.from_ids(references[present], self.end_id, self.skipped_ids)
        for name, values in (("candidate_words", generated.words), ("candidate_lengths", generated.lengths),
                             ("reference_words", refs.words), ("reference_lengths", refs.lengths),
                             ("references_per_image", present.sum(dim=1))):  # fmt: skip
            getattr(self, name).append(torch.as_tensor(values, dtype=torch.long, device=self.device))

    def compute(self) -> torch.Tensor:
        def flat(name: str) -> np.ndarray:
            values = getattr(self, name)
            values = torch.cat(values) if isinstance(values, list) else values
            return values.cpu().numpy()

        counts = flat("references_per_image")
        image = np.repeat(np.arange(len(counts)), counts)
        references = Sentences(flat("reference_words"), flat("reference_lengths"))
        candidates = Sentences(flat("candidate_words"), flat("candidate_lengths"))
        scores = corpus_scores(candidates, references, image, self.vocab_size)
        return torch.tensor(float(scores.mean()), dtype=torch.float64)


def cider_d_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = SIGMA, max_order: int = MAX_ORDER
) -> np.ndarray:
    """CIDEr-D of each image of a text corpus; document frequencies come from its references.

    The words (as ``str.split()`` gives) are numbered and scored by :class:`CiderD`; the
    vocabulary of the corpus must keep max_order-gram keys within int64 (about 55,000
    distinct words at order 4).

    Args:
        candidates: N generated captions, one per image.
        references: N lists of reference captions (at least one per image).
        sigma: width of the gaussian length penalty.
        max_order: n-grams of orders 1..max_order are compared.

    Returns:
        (N,) float64 scores (pycocoevalcap's ``Cider().compute_score`` second output).
    """
    check_corpus(candidates, references)
    flat_references, image_of_reference, _ = reference_layout(references)
    sentences, vocab_size = Sentences.from_text([*candidates, *flat_references])
    generated, refs = sentences.split(len(candidates))
    return corpus_scores(generated, refs, image_of_reference, vocab_size, sigma=sigma, max_order=max_order)


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = SIGMA, max_order: int = MAX_ORDER
) -> float:
    """Corpus CIDEr-D: the mean of :func:`cider_d_scores` (about 0 to 10; COCO models score ~1)."""
    return float(cider_d_scores(candidates, references, sigma=sigma, max_order=max_order).mean())
