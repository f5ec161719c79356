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
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from caption_torch.metrics.cider import CiderD, Sentences
from caption_torch.models.captioner import Captioner
from caption_torch.models.decoding import temperature_sample

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
