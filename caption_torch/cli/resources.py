"""Will the run fit? Its memory estimated from the config and the data, before anything is allocated.

The estimate adds, per training process:

* the parameters, their gradients and Adam's two moments: 4 copies of every parameter, counted on
  a decoder built on PyTorch's ``meta`` device (shapes only, no memory);
* one training batch's activations: what a step keeps for its backward pass, per caption token
  and layer, and their gradients (a deliberate overestimate of the order of magnitude, not a
  measurement; see :func:`activation_values`);
* the features, where ``--feature-storage`` holds them in RAM or on the accelerator.

It is compared with what the device can still give: ``MemAvailable`` of ``/proc/meminfo`` on
the CPU, ``torch.cuda.mem_get_info`` on a GPU. A run that would not fit is refused with the
estimate and the flag that sized most of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from caption_torch.data.schema import available_host_memory, human_bytes
from caption_torch.models.registry import CaptionConfig
from caption_torch.training.checkpoint_schema import meta_decoder

# The Transformer's feed-forward width (cs231n's TransformerDecoderLayer default).
FEEDFORWARD = 2048


@dataclass(frozen=True)
class Estimate:
    """Bytes one training process needs, by part."""

    parameters: int  # parameters + gradients + Adam's two moments
    activations: int  # one batch's saved activations and their gradients
    features: int  # features held in memory (or on the device) by --feature-storage

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.features


def value_bytes(precision: str) -> int:
    """Bytes per stored value under a Lightning precision flag (mixed precision keeps float32 weights)."""
    if precision.startswith("64"):
        return 8
    if precision in ("bf16-true", "16-true", "transformer-engine"):
        return 2
    return 4


def parameter_count(word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig) -> int:
    """Parameters of the decoder ``config`` builds (shapes from the meta device).

    The Transformer's layers are alike: its count is extrapolated from one and two layers, so an
    absurd ``--num-layers`` costs two small builds, not millions of modules.
    """
    if config.decoder == "transformer" and config.num_layers > 2:
        one, two = (parameter_count(word_to_idx, input_dim, config.updated(num_layers=n)) for n in (1, 2))
        return one + (config.num_layers - 1) * (two - one)
    return sum(parameter.numel() for parameter in meta_decoder(word_to_idx, input_dim, config).parameters())


def activation_values(config: CaptionConfig, vocab_size: int, steps: int) -> int:
    """Values one training batch keeps for backward and their gradients (x2), summed over its tokens.

    Per caption token: the word vector, each layer's hidden values, and the scores over the
    vocabulary with their softmax. A recurrent cell keeps its gates (4H for the LSTM, H for the
    RNN), its hidden and cell state; a Transformer layer its projections and attention weights
    (self-attention over ``steps`` positions per head), the cross-attention and the feed-forward.
    """
    captions = config.batch_size * (config.samples_per_image if config.self_critical else 1)
    W = config.wordvec_dim
    if config.decoder == "transformer":
        per_layer = 16 * W + 3 * config.num_heads * steps + 2 * FEEDFORWARD
        per_token = W + config.num_layers * per_layer
    else:
        gates = 4 if config.decoder == "lstm" else 1
        per_token = W + (gates + 3) * config.hidden_dim
    per_token += 3 * vocab_size
    return 2 * captions * steps * per_token


def estimate(
    config: CaptionConfig,
    word_to_idx: Mapping[str, int],
    feature_dim: int,
    caption_length: int,
    feature_rows: int,
    precision: str = "32-true",
    features_in_memory: bool = False,
) -> Estimate:
    """The memory one training process of this run needs (see the module docstring)."""
    size = value_bytes(precision)
    steps = config.max_length if config.self_critical else max(1, caption_length - 1)
    parameters = 4 * parameter_count(word_to_idx, feature_dim, config) * max(size, 4 if "mixed" in precision else size)
    activations = activation_values(config, len(word_to_idx), steps) * size
    features = feature_rows * feature_dim * 4 if features_in_memory else 0
    return Estimate(parameters, activations, features)


def sizing_flag(config: CaptionConfig, total: Callable[[CaptionConfig], int], part: Estimate) -> str:
    """The flag (and its value) that sized most of the estimate: the one whose halving saves the most.

    Candidates: the decoder's size flags, ``--batch-size``, ``--samples-per-image`` (self-critical),
    and ``--feature-storage`` where features are held in memory.
    """
    names = [*(name for name in config.fixed_fields() if name != "decoder"), "batch_size"]
    if config.self_critical:
        names.append("samples_per_image")
    full, savings = total(config), {}
    for name in names:
        value = getattr(config, name)
        halved = max(1, value // 2)
        if name == "wordvec_dim" and config.decoder == "transformer":  # keep it a multiple of 2 * heads
            halved = max(2 * config.num_heads, halved - halved % (2 * config.num_heads))
        try:
            savings[name] = full - total(config.updated(**{name: halved}))
        except ValueError:  # a halved value the config refuses
            continue
    best = max(savings, key=savings.get) if savings else "batch_size"
    if part.features > savings.get(best, 0):
        return "--feature-storage"
    return f"--{best.replace('_', '-')} {getattr(config, best)}"


def available(accelerator: str, devices: int | str) -> tuple[int | None, str, int]:
    """``(bytes free on the device that will train, its name, training processes sharing it)``.

    On CUDA the least free memory among the GPUs used, each holding one process; on the CPU the
    host's ``MemAvailable``, shared by all ``--devices`` processes. None where it cannot be known.
    """
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        if not torch.cuda.is_available():
            return None, "GPU", 1
        count = torch.cuda.device_count()
        if isinstance(devices, str) and devices != "auto":
            indices = [int(index) for index in devices.split(",") if index]
        elif isinstance(devices, int) and devices > 0:
            indices = list(range(min(devices, count)))
        else:
            indices = list(range(count))
        free = min(torch.cuda.mem_get_info(index)[0] for index in indices)
        return free, f"GPU {indices[0]}" if len(indices) == 1 else "each GPU", 1
    if accelerator not in ("cpu", "auto"):
        return None, accelerator, 1
    processes = devices if isinstance(devices, int) and devices > 0 else 1
    if devices == -1:
        processes = os.cpu_count() or 1
    return available_host_memory(), "the CPU", processes


def check_fits(
    config: CaptionConfig,
    word_to_idx: Mapping[str, int],
    feature_dim: int,
    caption_length: int,
    feature_rows: int,
    accelerator: str = "cpu",
    devices: int | str = 1,
    precision: str = "32-true",
    feature_storage: str = "hdf5",
) -> Estimate:
    """Refuse, with a ValueError naming the estimate and the flag that sized it, a run that would not fit.

    Returns:
        the estimate (per process).
    """
    free, where, processes = available(accelerator, devices)
    # "memory" holds the features in RAM, "device" on the accelerator (RAM too, on the CPU).
    held = feature_storage == "device" or (feature_storage == "memory" and where == "the CPU")
    part = estimate(config, word_to_idx, feature_dim, caption_length, feature_rows, precision, held)
    if free is not None and part.total * processes > free:

        def total(changed: CaptionConfig) -> int:
            return estimate(changed, word_to_idx, feature_dim, caption_length, feature_rows, precision, held).total

        flag = sizing_flag(config, total, part)
        share = f" for each of {processes} processes" if processes > 1 else ""
        raise ValueError(
            f"this run needs about {human_bytes(part.total)}{share} (parameters, gradients and Adam's moments "
            f"{human_bytes(part.parameters)}, one batch's activations {human_bytes(part.activations)}"
            + (f", features {human_bytes(part.features)}" if part.features else "")
            + f") but {where} has {human_bytes(free)} available; {flag} sized most of it: lower it"
        )
    return part
