"""Self-critical sequence training: sample captions, reward them with CIDEr-D, reinforce those above a baseline.

Per image, K captions are sampled from the model (softmax at temperature 1 until
``<END>`` or the length limit); each is rewarded with its CIDEr-D against all of the
image's references, document frequencies fixed by the training references. The
advantage of a sample is its reward minus a baseline:

    "greedy"  the CIDEr-D of the model's greedy caption of the same image     (Rennie et al. 2017)
    "mean"    the mean reward of the image's other K - 1 samples               (Luo 2020)

and the loss is ``-sum (reward - baseline) * log p(sample) / (number of samples)``
(``functional.policy_gradient_loss``): samples better than the baseline become likelier,
worse ones rarer.

    features (B, [M,] D) ─repeat K─► (B*K, [M,] D) ─sample─► captions (B*K, L) ─CIDEr-D vs refs─► rewards (B*K,)
                                                                       baseline (B*K,) ─┘ ─► advantages

:class:`SelfCriticalSystem` is the LightningModule that trains so; it is given its reward
(:func:`training_reward`, from the training captions) when it is built.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor

from caption_torch import vocabulary
from caption_torch.data.datamodule import ImageBatch
from caption_torch.data.protocol import SplitCaptions
from caption_torch.metrics.cider import CiderD, Sentences, corpus_fingerprint
from caption_torch.models.captioner import Captioner
from caption_torch.models.decoding import temperature_sample
from caption_torch.models.registry import CaptionConfig
from caption_torch.training.system import CaptioningSystem

CIDER_CACHE_FILE = "train_cider_df.npz"  # the training references' n-gram document frequencies, beside the data

BASELINES = ("mean", "greedy")


class SelfCriticalStep(NamedTuple):
    """One batch's loss and what the progress lines report."""

    loss: Tensor  # scalar, differentiable
    reward: float  # mean CIDEr-D of the samples
    baseline: float  # mean baseline
    advantages: np.ndarray  # (B*K,) reward - baseline of each sample


def reference_sentences(references: Tensor, model: Captioner) -> tuple[Sentences, np.ndarray]:
    """An ImageBatch's references (B, R, T) (rows of -1 where an image has fewer) as Sentences and their images."""
    present = references[:, :, 0] >= 0  # (B, R)
    sentences = Sentences.from_ids(references[present], model.end_id, (model.start_id, model.null_id))
    counts = present.sum(dim=1).cpu().numpy()
    return sentences, np.repeat(np.arange(len(counts)), counts)


def self_critical_step(
    model: Captioner,
    reward: CiderD,
    features: Tensor,
    references: Tensor,
    baseline: str,
    samples_per_image: int,
    max_length: int,
    generator: torch.Generator | None = None,
) -> SelfCriticalStep:
    """The self-critical loss of a batch of images.

    Args:
        model: the decoder being fine-tuned.
        reward: CIDEr-D with the training corpus's document frequencies.
        features: (B, D) or (B, M, D) image features.
        references: (B, R, T) every reference caption of each image (``<START> ... <END>``), -1 rows for none.
        baseline: ``"mean"`` or ``"greedy"``.
        samples_per_image: K >= 2 for the mean baseline (it needs the other samples), >= 1 for greedy.
        max_length: the longest sampled caption.
        generator: randomness of the samples (on the features' device).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    K = samples_per_image
    if K < (2 if baseline == "mean" else 1):
        raise ValueError(
            f"the {baseline} baseline needs samples_per_image >= {2 if baseline == 'mean' else 1}, got {K}"
        )
    B, skipped = features.shape[0], (model.start_id, model.null_id)
    repeated = features.repeat_interleave(K, dim=0)  # (B*K, [M,] D): image b's samples are rows bK .. bK + K - 1
    samples = temperature_sample(model, repeated, 1.0, max_length, generator)  # (B*K, L), no gradient
    refs, ref_image = reference_sentences(references, model)
    sample_image = np.repeat(np.arange(B), K)
    rewards = reward.scores(Sentences.from_ids(samples, model.end_id, skipped), sample_image, refs, ref_image)
    if baseline == "greedy":
        greedy = model.sample(features, max_length)
        greedy_rewards = reward.scores(Sentences.from_ids(greedy, model.end_id, skipped), np.arange(B), refs, ref_image)
        baselines = greedy_rewards[sample_image]
    else:
        per_image = rewards.reshape(B, K)
        baselines = ((per_image.sum(axis=1, keepdims=True) - per_image) / (K - 1)).reshape(-1)
    advantages = rewards - baselines
    weights = torch.as_tensor(advantages, dtype=features.dtype, device=features.device)
    loss = model.policy_loss(repeated, samples, weights)  # with the dropouts off that drew the samples
    return SelfCriticalStep(loss, float(rewards.mean()), float(baselines.mean()), advantages)


def training_reward(captions: SplitCaptions, word_to_idx: Mapping[str, int], cache_folder: Path | None) -> CiderD:
    """CIDEr-D rewards whose document frequencies are those of the training references ``captions``.

    They are counted once per dataset and cached in ``cache_folder`` (:data:`CIDER_CACHE_FILE`, tagged
    with a fingerprint of the captions, so changed captions are counted again); where the folder is
    read-only (or None) they are counted once per run.
    """
    end = word_to_idx[vocabulary.END]
    skipped = (word_to_idx[vocabulary.START], word_to_idx[vocabulary.NULL])
    vocab_size = len(word_to_idx)
    fingerprint = corpus_fingerprint(captions.captions, captions.image_idxs, vocab_size, end, skipped)
    cache = Path(cache_folder) / CIDER_CACHE_FILE if cache_folder is not None else None
    reward = CiderD.load(cache, fingerprint) if cache is not None else None
    if reward is None:
        reward = CiderD(Sentences.from_ids(captions.captions, end, skipped), captions.image_idxs, vocab_size)
        if cache is not None:
            try:
                reward.save(cache, fingerprint)
            except OSError as error:
                warnings.warn(f"could not cache the CIDEr-D document frequencies in {cache}: {error}", stacklevel=2)
    return reward


class SelfCriticalSystem(CaptioningSystem):
    """Self-critical fine-tuning: trains on images (every reference of each), rewarded by CIDEr-D.

    Validation, metrics, optimiser and checkpoint format are :class:`CaptioningSystem`'s; its config's
    ``self_critical`` is the baseline (``"mean"`` or ``"greedy"``) and ``samples_per_image`` is K.

    Args:
        word_to_idx, input_dim, config, hyperparameters: as :class:`CaptioningSystem`.
        reward: CIDEr-D with the training references' document frequencies (:func:`training_reward`);
            needed to train, not to load a checkpoint and caption with it.
    """

    trains_on_images = True
    monitor = "val_cider"

    def __init__(
        self,
        word_to_idx: Mapping[str, int],
        input_dim: int,
        config: CaptionConfig | None = None,
        reward: CiderD | None = None,
        **hyperparameters: Any,
    ) -> None:
        super().__init__(word_to_idx, input_dim, config, **hyperparameters)
        if self.config.self_critical not in BASELINES:
            raise ValueError(f"self-critical training needs a baseline, one of {BASELINES}: set the config's "
                             f"self_critical (got {self.config.self_critical!r})")  # fmt: skip
        self.reward = reward

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.reward is None:
            raise ValueError("SelfCriticalSystem trains on rewards: build it with reward=training_reward(...)")

    def training_step(self, batch: ImageBatch, batch_idx: int) -> dict:
        """Samples per image, rewarded by CIDEr-D; the loss makes those above the baseline likelier."""
        config = self.config
        step = self_critical_step(self.model, self.reward, batch.features, batch.references, config.self_critical,
                                  config.samples_per_image, config.max_length)  # fmt: skip
        images = batch.features.shape[0]
        self.log("train_loss", step.loss, prog_bar=True, batch_size=images)
        self.log("train_reward", step.reward, prog_bar=True, batch_size=images)
        self.log("train_baseline", step.baseline, batch_size=images)
        return {"loss": step.loss, "reward": step.reward, "baseline": step.baseline}


def system_class(config: CaptionConfig) -> type[CaptioningSystem]:
    """The LightningModule that trains (or was trained on) ``config``: self-critical when it names a baseline."""
    return SelfCriticalSystem if config.self_critical is not None else CaptioningSystem
