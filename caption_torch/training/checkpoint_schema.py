"""What a ``train.py`` checkpoint holds, described once, and checked before anything is built from it.

A checkpoint is a dict (read tensors-only). Its description:

* ``hyper_parameters``: ``word_to_idx`` (word -> distinct integer id >= 0, with ``<NULL>``),
  ``input_dim`` (an integer >= 1) and the flat fields of :class:`~caption_torch.models.registry.CaptionConfig`,
  each of the type the config declares (a field left out takes the config's default, as
  checkpoints written before it existed do); nothing else;
* ``state_dict``: exactly the tensors of the decoder those hyperparameters build, each of the
  shape that decoder gives it. The decoder is built on PyTorch's ``meta`` device for this,
  which allocates nothing, so a checkpoint claiming ``hidden_dim = 10^6`` costs nothing to refuse;
* the training state ``--resume`` needs, where present: ``epoch`` and ``global_step``
  (integers >= 0), one Adam state whose moments have the parameters' shapes, one scheduler,
  and the loops' and callbacks' state as objects.

Every problem is a :class:`CheckpointError` naming the file, the entry, what was expected and what was found.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from caption_torch.models.config import TrainingConfig
from caption_torch.models.registry import DECODERS, CaptionConfig, build_decoder
from caption_torch.models.transformer_layers import CS231N_VERSIONS


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, damaged, or does not fit the data."""


def _problem(path: Path | str, entry: str, expected: str, found: Any) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {entry}: expected {expected}, found {found}")


def _found(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A description of each kind of value a hyperparameter may take: (what it is called, its test).
_KINDS: dict[Any, tuple[str, Any]] = {
    int: ("an integer", _is_int),
    float: ("a finite number", lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    type(None): ("none", lambda v: v is None),
}


def _kind(annotation: Any) -> tuple[str, Any]:
    """(name, test) of a config field's declared type: ``int``, ``float``, ``str``, ``bool`` or unions of them."""
    if annotation in _KINDS:
        return _KINDS[annotation]
    members = typing.get_args(annotation)
    if members:
        kinds = [_kind(member) for member in members]
        return " or ".join(name for name, _ in kinds), lambda v: any(test(v) for _, test in kinds)
    return f"a {annotation}", lambda v: True  # a type this description does not know: the config validates it


def hyperparameter_kinds() -> dict[str, tuple[str, Any, bool]]:
    """``{name: (what it must be, its test, required)}``: the system's arguments, typed as the config declares.

    The config's flat fields: ``decoder``, every decoder's sizes (checkpoints written before the
    decoder configs hold every decoder's) and the training settings.
    """
    kinds = {
        "word_to_idx": ("an object of word: id", lambda v: isinstance(v, Mapping), True),
        "input_dim": ("an integer >= 1", lambda v: _is_int(v) and v >= 1, True),
        "decoder": (*_kind(str), False),
    }
    for declaring in (*(entry.config for entry in DECODERS.values()), TrainingConfig):
        hints = typing.get_type_hints(declaring)
        for field in fields(declaring):
            kinds.setdefault(field.name, (*_kind(hints[field.name]), False))
    return kinds


def check_hyperparameters(hparams: Any, path: Path | str) -> tuple[dict[str, int], int, CaptionConfig]:
    """The checkpoint's vocabulary, feature width and config, each checked against its description.

    Renames ``cell_type`` to ``decoder`` in place (checkpoints written before the Transformer).
    """
    if not isinstance(hparams, dict):
        raise _problem(path, "hyper_parameters", "an object of the system's hyperparameters", _found(hparams))
    if "cell_type" in hparams and "decoder" not in hparams:
        hparams["decoder"] = hparams.pop("cell_type")
    kinds = hyperparameter_kinds()
    for name, value in hparams.items():
        if name not in kinds:
            raise _problem(path, f"hyper_parameters[{name!r}]", f"only the hyperparameters {sorted(kinds)}",
                           "a key train.py never writes (was it written by train.py?)")  # fmt: skip
        what, test, _ = kinds[name]
        if not test(value):
            raise _problem(path, f"hyper_parameters[{name!r}]", what, _found(value))
    for name, (what, _, required) in kinds.items():
        if required and name not in hparams:
            raise CheckpointError(f"checkpoint {path} lacks the hyperparameter {name!r} ({what}): "
                                  "was it written by train.py?")  # fmt: skip
    word_to_idx = hparams["word_to_idx"]
    ids: dict[int, str] = {}
    for word, idx in word_to_idx.items():
        if not isinstance(word, str) or not _is_int(idx) or idx < 0:
            raise _problem(path, "hyper_parameters['word_to_idx']", "words mapped to integer ids >= 0",
                           f"{_found(word)}: {_found(idx)}")  # fmt: skip
        if idx in ids:
            raise _problem(path, "hyper_parameters['word_to_idx']", "a distinct id per word",
                           f"id {idx} for {ids[idx]!r} and {word!r}")  # fmt: skip
        ids[idx] = word
    if "<NULL>" not in word_to_idx:
        raise _problem(path, "hyper_parameters['word_to_idx']", "the padding token '<NULL>'", "it missing")
    try:
        config = CaptionConfig.from_flat(hparams)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: hyper_parameters: {error}") from None
    return dict(word_to_idx), hparams["input_dim"], config


def meta_decoder(word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig) -> torch.nn.Module:
    """The decoder a config builds, on the meta device: every shape, no memory.

    Raises:
        ValueError: if these sizes build no model (a size too large to index, say).
    """
    try:
        with torch.device("meta"):
            return build_decoder(dict(word_to_idx), input_dim, config)
    except (RuntimeError, OverflowError, TypeError) as error:
        raise ValueError(f"these sizes build no model ({' '.join(str(error).split())[:200]})") from None


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    """``{state_dict key: shape}`` of the system around ``model``."""
    return {f"model.{name}": tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_state_dict(state_dict: Any, shapes: Mapping[str, tuple], path: Path | str) -> None:
    """``state_dict`` holds exactly the tensors ``shapes`` names, floating point, of those shapes."""
    if not isinstance(state_dict, Mapping):
        raise _problem(path, "state_dict", "an object of named tensors", _found(state_dict))
    for name, tensor in state_dict.items():
        if name not in shapes:
            raise _problem(path, f"state_dict[{name!r}]", f"only the tensors {sorted(shapes)[:4]}...",
                           "a tensor this model does not have")  # fmt: skip
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise _problem(path, f"state_dict[{name!r}]", "a floating-point tensor", _found(tensor))
        if tuple(tensor.shape) != shapes[name]:
            raise _problem(path, f"state_dict[{name!r}]",
                           f"shape {shapes[name]} (the model its hyperparameters build)", _found(tensor))  # fmt: skip
    missing = [name for name in shapes if name not in state_dict]
    if missing:
        raise _problem(path, f"state_dict[{missing[0]!r}]", f"a tensor of shape {shapes[missing[0]]}", "no such key")


def check_training_state(checkpoint: Mapping[str, Any], parameters: list[tuple], path: Path | str) -> None:
    """The state ``--resume`` restores, where the checkpoint holds it: counters, Adam's moments, the loops."""
    for key in ("epoch", "global_step"):
        if key in checkpoint and not (_is_int(checkpoint[key]) and checkpoint[key] >= 0):
            raise _problem(path, key, "an integer >= 0", _found(checkpoint[key]))
    for key in ("loops", "callbacks"):
        if key in checkpoint and not isinstance(checkpoint[key], Mapping):
            raise _problem(path, key, "an object", _found(checkpoint[key]))
    for name, state in checkpoint.get("callbacks", {}).items():
        if not isinstance(state, Mapping):
            raise _problem(path, f"callbacks[{name!r}]", "an object", _found(state))
    history = checkpoint.get("callbacks", {}).get("LossHistory", {})
    for key in ("losses", "rewards"):
        values = history.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            raise _problem(path, f"callbacks['LossHistory'][{key!r}]", "a list of numbers", _found(values))
    schedulers = checkpoint.get("lr_schedulers", [{}])
    if not (isinstance(schedulers, list) and len(schedulers) == 1 and isinstance(schedulers[0], Mapping)):
        raise _problem(path, "lr_schedulers", "a list of one scheduler state", _found(schedulers))
    if "optimizer_states" not in checkpoint:
        return
    optimizers = checkpoint["optimizer_states"]
    if not (isinstance(optimizers, list) and len(optimizers) == 1 and isinstance(optimizers[0], Mapping)):
        raise _problem(path, "optimizer_states", "a list of one Adam state", _found(optimizers))
    adam = optimizers[0]
    groups, state = adam.get("param_groups"), adam.get("state")
    numbered = list(range(len(parameters)))
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], Mapping)
            and groups[0].get("params") == numbered):  # fmt: skip
        raise _problem(path, "optimizer_states[0]['param_groups']",
                       f"one group of the model's {len(parameters)} parameters", _found(groups))  # fmt: skip
    if not isinstance(state, Mapping):
        raise _problem(path, "optimizer_states[0]['state']", "an object of per-parameter states", _found(state))
    for index, moments in state.items():
        entry = f"optimizer_states[0]['state'][{index!r}]"
        if index not in numbered or not isinstance(moments, Mapping):
            raise _problem(path, entry, f"the state of one of parameters 0..{len(parameters) - 1}", _found(moments))
        for key in ("exp_avg", "exp_avg_sq"):
            tensor = moments.get(key)
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != parameters[index]:
                raise _problem(path, f"{entry}[{key!r}]", f"a tensor of the parameter's shape {parameters[index]}",
                               _found(tensor))  # fmt: skip
        step = moments.get("step")
        if not (isinstance(step, torch.Tensor) and step.numel() == 1) and not isinstance(step, (int, float)):
            raise _problem(path, f"{entry}['step']", "a step count", _found(step))


def _version_of_tensors(
    stored: Any, word_to_idx: Mapping[str, int], input_dim: int, config: CaptionConfig
) -> int | None:
    """The other cs231n_version of the Transformer whose tensors ``stored`` holds exactly, if one does."""
    if config.decoder != "transformer" or not isinstance(stored, Mapping):
        return None
    found = {name: tuple(t.shape) for name, t in stored.items() if isinstance(t, torch.Tensor)}
    for version in CS231N_VERSIONS:
        if version != config.cs231n_version:
            other = meta_decoder(word_to_idx, input_dim, config.updated(cs231n_version=version))
            if expected_shapes(other) == found:
                return version
    return None


def check_checkpoint(checkpoint: dict[str, Any], path: Path | str) -> tuple[dict[str, int], int, CaptionConfig]:
    """A read checkpoint against its whole description; returns its vocabulary, feature width and config."""
    for key in ("hyper_parameters", "state_dict"):
        if key not in checkpoint:
            raise _problem(path, key, "the entries hyper_parameters and state_dict",
                           f"keys {sorted(map(str, checkpoint))[:8]} (was it written by train.py?)")  # fmt: skip
    word_to_idx, input_dim, config = check_hyperparameters(checkpoint["hyper_parameters"], path)
    stored = checkpoint["state_dict"]
    if config.decoder == "transformer" and isinstance(stored, Mapping) and config.num_layers > len(stored):
        # Every layer holds tensors: refused before building millions of (meta) layers.
        raise _problem(path, "hyper_parameters['num_layers']", f"at most one layer per stored tensor ({len(stored)})",
                       config.num_layers)  # fmt: skip
    try:
        model = meta_decoder(word_to_idx, input_dim, config)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: hyper_parameters: {error}") from None
    try:
        check_state_dict(stored, expected_shapes(model), path)
    except CheckpointError as error:
        other = _version_of_tensors(stored, word_to_idx, input_dim, config)
        if other is None:
            raise
        said = checkpoint["hyper_parameters"].get("cs231n_version", "not given (2021 then)")
        raise CheckpointError(f"{error}; the tensors are those of the cs231n_version {other} layer, but "
                              f"hyper_parameters['cs231n_version'] is {said}") from None  # fmt: skip
    check_training_state(checkpoint, [tuple(p.shape) for p in model.parameters()], path)
    return word_to_idx, input_dim, config
