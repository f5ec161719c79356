"""Datasets and the LightningDataModule over any data source (``protocol.CaptionSource``).

Training items are captions; evaluation items are images with all their
reference captions. Features are streamed from HDF5: every batch reads its
feature rows in ONE sorted, de-duplicated h5py call, in whichever process asks
(the file is opened lazily there, never before a fork, and never pickled)::

    batch indices ─► caption rows ─► image rows (B,) ─► np.unique ─► h5py read (U, ...)
                                                          └─ inverse ─► (B, ...) in batch order

A feature file of shape (N_images, D) gives batches (B, D) (one vector per image, cs231n's
fc7 files); one of (N_images, M, D) (M region vectors per image) gives (B, M, D), unchanged.

``feature_storage`` trades memory for speed: ``"hdf5"`` (stream), ``"memory"``
(the whole split as one CPU tensor, shared with workers) or ``"device"`` (on the
accelerator; batches carry image rows and features are gathered there after the
transfer, in ``on_after_batch_transfer``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import h5py
import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from caption_torch.data.protocol import CaptionSource, SplitCaptions, subsample
from caption_torch.functional.checks import check_positive_integer

FEATURE_STORAGES = ("hdf5", "memory", "device")


class CaptionBatch(NamedTuple):
    """A training minibatch of captions."""

    features: Tensor | None  # (B, D) or (B, M, D) float32; None until gathered when features live on the device
    captions: Tensor  # (B, T) int64, <START> ... <END> <NULL>...
    image_rows: Tensor  # (B,) int64, row of each caption's image in the split's feature file
    split: str = "train"  # whose feature file image_rows index


class ImageBatch(NamedTuple):
    """An evaluation minibatch of images with every reference caption."""

    features: Tensor | None  # (B, D) or (B, M, D) float32
    references: Tensor  # (B, R, T) int64; rows of -1 where an image has fewer than R captions
    image_rows: Tensor  # (B,) int64
    split: str = "val"


class FeatureRows:
    """Reads rows of a split's features, (N_images, D) or (N_images, M, D), from HDF5, memory, or not at all
    (device storage)."""

    def __init__(self, path: Path, storage: str = "hdf5") -> None:
        if storage not in FEATURE_STORAGES:
            raise ValueError(f"feature_storage must be one of {FEATURE_STORAGES}, got {storage!r}")
        self.path, self.storage = Path(path), storage
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self.in_memory = torch.from_numpy(self.read_all()) if storage == "memory" else None

    def read_all(self) -> np.ndarray:
        """Every row, float32."""
        with h5py.File(self.path, "r") as f:
            return np.asarray(f["features"], dtype=np.float32)

    def _dataset(self) -> h5py.Dataset:
        # Open on first use in this process: an h5py handle must not cross a fork.
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file["features"]

    def read(self, rows: np.ndarray) -> Tensor | None:
        """Features of the given image rows, (B, D) or (B, M, D) float32 in the order asked; None for device storage."""
        if self.storage == "device":
            return None
        if self.in_memory is not None:
            return self.in_memory[torch.from_numpy(rows)]
        unique_rows, inverse = np.unique(rows, return_inverse=True)  # h5py needs increasing indices
        block = self._dataset()[unique_rows]
        return torch.from_numpy(np.asarray(block, dtype=np.float32)[inverse.reshape(-1)])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}


def _already_batched(batch):
    """collate_fn for datasets that build whole batches in ``__getitems__``."""
    return batch


class CaptionDataset(Dataset):
    """One item per caption; ``__getitems__`` builds a :class:`CaptionBatch` in one read."""

    def __init__(self, captions: SplitCaptions, features: FeatureRows, split: str = "train") -> None:
        self.split = split
        self.captions = torch.from_numpy(captions.captions)
        self.image_idxs = captions.image_idxs
        self.features = features

    def __len__(self) -> int:
        return self.captions.shape[0]

    def __getitems__(self, indices: list[int]) -> CaptionBatch:
        index = np.asarray(indices, dtype=np.int64)
        rows = self.image_idxs[index]
        return CaptionBatch(self.features.read(rows), self.captions[index], torch.from_numpy(rows), self.split)

    def __getitem__(self, index: int) -> CaptionBatch:
        return self.__getitems__([index])


class ImageDataset(Dataset):
    """One item per image that has captions, with all of them as references."""

    def __init__(
        self,
        captions: SplitCaptions,
        features: FeatureRows,
        image_rows: np.ndarray | None = None,
        split: str = "val",
    ) -> None:
        self.split = split
        order = np.argsort(captions.image_idxs, kind="stable")
        sorted_rows = captions.image_idxs[order]
        all_rows, starts = np.unique(sorted_rows, return_index=True)
        groups = np.split(order, starts[1:])
        by_row = dict(zip(all_rows.tolist(), groups))
        self.image_rows = all_rows if image_rows is None else np.asarray(image_rows, dtype=np.int64)
        missing = [row for row in self.image_rows.tolist() if row not in by_row]
        if missing:
            raise ValueError(f"images {missing[:5]} have no captions")
        self.caption_indices = [by_row[row] for row in self.image_rows.tolist()]
        self.split_captions = captions
        self.captions = captions.captions
        self.features = features

    def __len__(self) -> int:
        return len(self.image_rows)

    def references(self, index: int) -> np.ndarray:
        """(R, T) reference captions of the image at ``index``."""
        return self.captions[self.caption_indices[index]]

    def __getitems__(self, indices: list[int]) -> ImageBatch:
        rows = self.image_rows[np.asarray(indices, dtype=np.int64)]
        refs = [self.references(i) for i in indices]
        padded = np.full((len(indices), max(len(r) for r in refs), self.captions.shape[1]), -1, dtype=np.int64)
        for i, r in enumerate(refs):
            padded[i, : len(r)] = r
        return ImageBatch(self.features.read(rows), torch.from_numpy(padded), torch.from_numpy(rows), self.split)

    def __getitem__(self, index: int) -> ImageBatch:
        return self.__getitems__([index])


class CaptionDataModule(L.LightningDataModule):
    """Train on captions, validate on images, from any data source (``protocol.CaptionSource``).

    Args:
        source: what to read: ``sources.open_source(...)`` gives cs231n's folder or the embedded dataset.
        batch_size: captions per training batch.
        eval_batch_size: images per validation batch (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        max_train: train on this many random captions only (cs231n's ``max_train``).
        max_val_images: validate on this many random val images only (None: all).
        feature_storage: ``"hdf5"``, ``"memory"`` or ``"device"`` (see module docstring).
        pin_memory: pin batches for faster host-to-GPU copies.
        seed: seed of the ``max_train`` / ``max_val_images`` subsets.
        train_on_images: training batches are images with all their references (``batch_size``
            images each), as self-critical training needs, instead of captions.
    """

    def __init__(
        self,
        source: CaptionSource,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train: int | None = None,
        max_val_images: int | None = None,
        feature_storage: str = "hdf5",
        pin_memory: bool = False,
        seed: int = 0,
        train_on_images: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("max_train", max_train), ("max_val_images", max_val_images)):  # fmt: skip
            if value is not None:
                check_positive_integer(name, value)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if feature_storage not in FEATURE_STORAGES:
            raise ValueError(f"feature_storage must be one of {FEATURE_STORAGES}, got {feature_storage!r}")
        # Checkpoints store these hyperparameters as plain values (loadable with weights_only): the source
        # is kept as an attribute, and its description as a string.
        self.save_hyperparameters(ignore=["source"])
        self.hparams["source"] = repr(source)
        # Which folder's features a checkpoint learnt from: `python -m caption_torch.caption` makes new ones alike.
        self.hparams["data_dir"] = None if source.named_folder is None else str(source.named_folder)
        self.hparams["pca_features"] = source.pca_features
        self.source = source
        self.word_to_idx: dict[str, int] = {}
        self.idx_to_word: dict[int, str] = {}
        self.feature_dim = 0
        self.num_images: dict[str, int] = {}  # rows of each split's feature file
        self._device_features: dict[str, Tensor] = {}

    def prepare_data(self) -> None:
        # Runs once per node, before setup: the only place that writes files.
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.word_to_idx:  # already set up (train.py sets up early to build the model)
            return
        hparams, source = self.hparams, self.source
        self.word_to_idx, self.idx_to_word = source.vocabulary()
        splits = source.captions(len(self.idx_to_word))
        self.num_images, self.feature_dim = source.check(splits, self.word_to_idx)
        features = {split: FeatureRows(source.feature_file(split), hparams.feature_storage) for split in splits}

        train = splits["train"]
        if hparams.max_train is not None:
            train = SplitCaptions(*subsample(train.captions, train.image_idxs, hparams.max_train, hparams.seed))
        self.train_set = CaptionDataset(train, features["train"], "train")
        val_rows = np.unique(splits["val"].image_idxs)
        if hparams.max_val_images is not None and hparams.max_val_images < len(val_rows):
            val_rows = np.sort(
                np.random.default_rng(hparams.seed).choice(val_rows, hparams.max_val_images, replace=False)
            )
        self.val_set = ImageDataset(splits["val"], features["val"], val_rows, "val")
        self.train_images = ImageDataset(train, features["train"], split="train")
        self._splits, self._features = splits, features

    def split_images(self, split: str) -> ImageDataset:
        """Every image of a split the source read (train, val, and test where its folder has one)."""
        if split not in self._splits:
            raise ValueError(f"{self.source.folder}: no {split} split")
        return ImageDataset(self._splits[split], self._features[split], split=split)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=_already_batched,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_images if self.hparams.train_on_images else self.train_set
        return self._loader(dataset, self.hparams.batch_size, shuffle=True)

    @property
    def train_captions(self) -> SplitCaptions:
        """The captions training reads (all of the train split's, or ``max_train`` of them)."""
        return self.train_images.split_captions

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size or self.hparams.batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``feature_storage="device"``, gather the batch's features on the device."""
        if batch.features is not None:
            return batch
        split = batch.split
        device = batch.image_rows.device
        if split not in self._device_features or self._device_features[split].device != device:
            self._device_features[split] = torch.from_numpy(self._features[split].read_all()).to(device)
        return batch._replace(features=self._device_features[split][batch.image_rows])
