"""Edge cases of data.py, metrics.py and checkpointing.py that their own test files leave open: each test here
fails if the line it guards is broken (the line is named in the test's docstring)."""

import os

import numpy as np
import pytest
import torch

from caption_torch.data.datamodule import CaptionDataModule, FeatureRows, ImageDataset
from caption_torch.data.protocol import SplitCaptions
from caption_torch.data.sources import open_source
from caption_torch.metrics.coco import cider_d_scores
from caption_torch.training.checkpointing import AtomicCheckpointIO, LastCheckpoint


def test_feature_rows_reopen_the_file_in_a_forked_child(coco_folder):
    """An h5py handle must not cross a fork: the child opens its own (FeatureRows._dataset's pid check)."""
    reader = FeatureRows(coco_folder / "train2014_vgg16_fc7_pca.h5")
    rows = np.array([5, 1, 5])
    expected = reader.read(rows).numpy()  # opens the file in this process
    parents_handle = reader._file
    child = os.fork()
    if child == 0:  # the child reports through its exit status only
        try:
            same_rows = np.array_equal(reader.read(rows).numpy(), expected)
            os._exit(0 if same_rows and reader._file is not parents_handle else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child read through the parent's handle"
    assert reader._file is parents_handle  # the parent's is untouched


def test_references_keep_the_files_order():
    """An image's references come in file order, as the JSONL and the pictures of evaluate show them
    (ImageDataset's stable argsort; numpy's default sort reorders equal keys of 60 interleaved captions)."""
    image_idxs = np.random.default_rng(0).integers(0, 5, size=60)
    captions = np.arange(60 * 3).reshape(60, 3)  # caption i holds 3i, 3i+1, 3i+2: its own number
    images = ImageDataset(SplitCaptions(captions, image_idxs), features=None)
    for index, row in enumerate(images.image_rows.tolist()):
        np.testing.assert_array_equal(images.references(index), captions[image_idxs == row])


def test_an_image_with_fewer_references_is_padded_with_rows_of_minus_one(tmp_path):
    """-1 marks a missing reference (ImageDataset's padding); 0 would read as a caption of <NULL>s."""
    captions = np.arange(5 * 4).reshape(5, 4)
    no_features = FeatureRows(tmp_path / "never-read.h5", storage="device")  # batches carry image rows only
    images = ImageDataset(SplitCaptions(captions, np.array([0, 1, 0, 0, 1])), no_features)
    batch = images.__getitems__([0, 1])
    assert batch.features is None and batch.references.shape == (2, 3, 4)
    np.testing.assert_array_equal(batch.references[0].numpy(), captions[[0, 2, 3]])
    np.testing.assert_array_equal(batch.references[1].numpy(), np.concatenate([captions[[1, 4]], np.full((1, 4), -1)]))


def test_training_batches_are_shuffled(coco_folder):
    """Every caption once per epoch, in an order that is not the file's (train_dataloader's shuffle=True)."""
    datamodule = CaptionDataModule(open_source(coco_folder), batch_size=36)  # the whole split in one batch
    datamodule.setup("fit")
    in_file_order = datamodule.train_set.captions
    torch.manual_seed(0)
    (batch,) = list(datamodule.train_dataloader())
    assert sorted(map(tuple, batch.captions.tolist())) == sorted(map(tuple, in_file_order.tolist()))
    assert not torch.equal(batch.captions, in_file_order)


def test_cider_d_refuses_a_zero_sigma():
    """sigma = 0 would divide by zero in the length penalty (cider_d_scores' sigma check)."""
    with pytest.raises(ValueError, match="sigma must be positive, got 0"):
        cider_d_scores(["a cat"], [["a cat"]], sigma=0)


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["022", "077"])
def test_checkpoint_file_mode_follows_the_umask(tmp_path, umask):
    """A checkpoint gets the mode of any new file (666 less the umask), not mkstemp's private 600
    (AtomicCheckpointIO's fchmod)."""
    previous = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    finally:
        os.umask(previous)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["step"] == 1


class _CountingTrainer:
    """What LastCheckpoint uses of a Trainer: the step counter, the fast-dev-run flag and save_checkpoint."""

    def __init__(self):
        self.global_step, self.saved_at, self.fast_dev_run = 0, [], False

    def save_checkpoint(self, path, weights_only):
        self.saved_at.append(self.global_step)


@pytest.mark.parametrize("every_n_steps, expected", [(3, [3, 6, 9]), (None, [])])
def test_last_checkpoint_saves_every_n_optimizer_steps(tmp_path, every_n_steps, expected):
    """Steps 3, 6 and 9 of 10 with every_n_steps=3; none between epochs without it (LastCheckpoint's step test)."""
    callback, trainer = LastCheckpoint(every_n_steps), _CountingTrainer()
    callback.path = tmp_path / "last.ckpt"
    for batch_index in range(10):
        trainer.global_step = batch_index + 1  # Lightning counts the step before on_train_batch_end
        callback.on_train_batch_end(trainer, None, None, None, batch_index)
    assert trainer.saved_at == expected
    callback.on_train_epoch_end(trainer, None)
    assert trainer.saved_at == expected + [10]  # and always at the end of an epoch


@pytest.mark.parametrize("every_n_steps", [0, -2])
def test_last_checkpoint_refuses_a_step_interval_below_one(every_n_steps):
    """0 would silently mean "never" (LastCheckpoint's check)."""
    with pytest.raises(ValueError, match=f"every_n_steps must be a positive integer, got {every_n_steps}"):
        LastCheckpoint(every_n_steps)
