"""CaptionDataModule: lazy HDF5 reads, batching, workers, storages, subsets, errors."""

import pickle

import h5py
import numpy as np
import pytest
import torch

from caption_torch.data import cs231n as coco
from caption_torch.data.cs231n import Cs231nFolder
from caption_torch.data.datamodule import CaptionBatch, CaptionDataModule, FeatureRows, ImageBatch
from caption_torch.data.protocol import ImageSource
from caption_torch.data.sources import open_source


def _datamodule(folder, pca_features=True, **kwargs):
    dm = CaptionDataModule(open_source(folder, pca_features=pca_features), **({"batch_size": 8} | kwargs))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _features(folder, split="train"):
    with h5py.File(folder / f"{split}2014_vgg16_fc7_pca.h5") as f:
        return torch.from_numpy(f["features"][:])


def test_feature_rows_reads_unsorted_repeated_rows_in_order(coco_folder):
    reader = FeatureRows(coco_folder / "train2014_vgg16_fc7_pca.h5")
    rows = np.array([7, 2, 7, 0, 11, 2])
    torch.testing.assert_close(reader.read(rows), _features(coco_folder)[rows])


def test_feature_rows_never_pickles_an_open_file(coco_folder):
    reader = FeatureRows(coco_folder / "train2014_vgg16_fc7_pca.h5")
    reader.read(np.array([0]))
    assert reader._file is not None
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._file is None
    torch.testing.assert_close(clone.read(np.array([3])), reader.read(np.array([3])))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_batches_match_the_files(coco_folder, num_workers):
    dm = _datamodule(coco_folder, num_workers=num_workers)
    features = _features(coco_folder)
    data = coco.load_coco_data(coco_folder)
    seen = 0
    for batch in dm.train_dataloader():
        assert isinstance(batch, CaptionBatch)
        assert batch.features.dtype == torch.float32 and batch.captions.dtype == torch.int64
        torch.testing.assert_close(batch.features, features[batch.image_rows])
        # Each caption's image row is the one the captions file gives for it.
        for caption, row in zip(batch.captions.numpy(), batch.image_rows.numpy()):
            matches = (data["train_captions"] == caption).all(axis=1)
            assert row in data["train_image_idxs"][matches]
        seen += len(batch.captions)
    assert seen == 36


def test_val_batches_hold_every_reference(coco_folder):
    dm = _datamodule(coco_folder, eval_batch_size=4)
    batches = list(dm.val_dataloader())
    assert [len(b.image_rows) for b in batches] == [4, 2]
    batch = batches[0]
    assert isinstance(batch, ImageBatch) and batch.references.shape == (4, 3, 17)
    data = coco.load_coco_data(coco_folder)
    for refs, row in zip(batch.references.numpy(), batch.image_rows.numpy()):
        expected = data["val_captions"][data["val_image_idxs"] == row]
        np.testing.assert_array_equal(np.sort(refs, axis=0), np.sort(expected, axis=0))


def test_memory_and_device_storage_give_the_same_batches(coco_folder):
    torch.manual_seed(0)
    streamed = next(iter(_datamodule(coco_folder).val_dataloader()))
    in_memory = next(iter(_datamodule(coco_folder, feature_storage="memory").val_dataloader()))
    dm = _datamodule(coco_folder, feature_storage="device")
    on_device = next(iter(dm.val_dataloader()))
    assert on_device.features is None
    gathered = dm.on_after_batch_transfer(on_device, 0)
    torch.testing.assert_close(in_memory.features, streamed.features)
    torch.testing.assert_close(gathered.features, streamed.features)
    # Training batches and train images gather from the train split's features, not val's.
    train_batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    torch.testing.assert_close(train_batch.features, _features(coco_folder)[train_batch.image_rows])
    train_images = dm.on_after_batch_transfer(dm.train_images.__getitems__([0, 1]), 0)
    torch.testing.assert_close(train_images.features, _features(coco_folder)[train_images.image_rows])


def test_max_train_and_max_val_images(coco_folder):
    dm = _datamodule(coco_folder, max_train=10, max_val_images=4, seed=1)
    assert len(dm.train_set) == 10 and len(dm.val_set) == 4
    again = _datamodule(coco_folder, max_train=10, max_val_images=4, seed=1)
    assert torch.equal(dm.train_set.captions, again.train_set.captions)


def test_full_features(coco_folder):
    dm = _datamodule(coco_folder, pca_features=False)
    assert dm.feature_dim == 4096
    assert next(iter(dm.train_dataloader())).features.shape == (8, 4096)


def test_errors(coco_folder):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        CaptionDataModule(open_source(coco_folder), batch_size=0)
    with pytest.raises(ValueError, match="feature_storage must be one of"):
        CaptionDataModule(open_source(coco_folder), feature_storage="disk")
    with pytest.raises(ValueError, match="only 36"):
        _datamodule(coco_folder, max_train=1000)
    with h5py.File(coco_folder / "coco2014_captions.h5", "a") as f:
        f["train_captions"][0, 0] = 4
    with pytest.raises(coco.CocoDataError, match="1 train captions do not begin with <START>"):
        _datamodule(coco_folder)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(coco.CocoDataError, match="coco2014_vocab.json.*no such file"):
        _datamodule(tmp_path / "nowhere")


class RegionFeatures(Cs231nFolder):
    """A data format defined outside the package: cs231n's captions and vocabulary, with M = 3 region
    vectors per image in its own feature files (N_images, 3, D), whose layout check it does itself."""

    def __init__(self, folder, regions):
        super().__init__(folder)
        self.regions = regions  # {split: (N_images, M, D) array}
        for split, features in regions.items():
            with h5py.File(self.feature_file(split), "w") as f:
                f["features"] = features

    def feature_file(self, split):
        return self.folder / f"{split}_regions.h5"

    def check(self, splits, word_to_idx):
        return {split: len(self.regions[split]) for split in splits}, self.regions["train"].shape[-1]

    def image_sources(self, split):
        return [ImageSource(url=f"region://{split}/{row}") for row in range(len(self.regions[split]))]


@pytest.mark.parametrize("storage", ["hdf5", "memory", "device"])
def test_a_source_of_region_features_gives_batches_of_every_region_unchanged(coco_folder, storage):
    """The DataModule reads a source only through the protocol: (N, M, D) files pass through as (B, M, D)."""
    rng = np.random.default_rng(0)
    regions = {split: rng.normal(size=(n, 3, 5)).astype(np.float32) for split, n in (("train", 12), ("val", 6))}
    dm = CaptionDataModule(RegionFeatures(coco_folder, regions), batch_size=8, feature_storage=storage)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.feature_dim == 5 and dm.num_images == {"train": 12, "val": 6}
    for loader, split in ((dm.train_dataloader(), "train"), (dm.val_dataloader(), "val")):
        batch = dm.on_after_batch_transfer(next(iter(loader)), 0)
        assert batch.features.shape == (len(batch.image_rows), 3, 5)
        torch.testing.assert_close(batch.features, torch.from_numpy(regions[split])[batch.image_rows])
    assert dm.source.image_sources("val")[2].describe() == "region://val/2"


def test_one_vector_per_image_gives_two_dimensional_batches(coco_folder):
    """cs231n's (N, D) files: batches stay (B, D), the fast case, and each image's source is its URL."""
    dm = _datamodule(coco_folder)
    assert next(iter(dm.train_dataloader())).features.shape == (8, 512)
    sources = dm.source.image_sources("val")
    assert len(sources) == 6 and sources[1] == ImageSource(url="http://example.org/val/1.jpg")
    assert sources[1].record() == {"url": "http://example.org/val/1.jpg"} and sources[1].scene is None


def test_open_source_tells_the_formats_apart(coco_folder, tmp_path):
    from caption_torch.data.synthetic.generate import write_synthetic_dataset
    from caption_torch.data.synthetic.source import SyntheticSource

    assert type(open_source(coco_folder)) is Cs231nFolder
    embedded = open_source(write_synthetic_dataset(tmp_path / "tiny", size="tiny", seed=0))
    assert type(embedded) is SyntheticSource
    dm = CaptionDataModule(embedded, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    (first, *_) = dm.source.image_sources("train")
    assert first.url is None and first.record() == {"scene": first.scene} and first.describe().startswith("scene: {")
    with pytest.raises(ValueError, match="a url or a scene"):
        ImageSource(url="http://x", scene={"setting": "park"})
    with pytest.raises(ValueError, match="need a coco_captioning folder"):
        open_source(None, pca_features=False)
