"""The cs231n layout: load_coco_data and friends, both key spellings, PCA and full features, bad files."""

import json

import h5py
import numpy as np
import pytest
from conftest import write_coco_folder

from caption_torch.data import cs231n as coco


@pytest.mark.parametrize("idx_key", ["image_idxs", "image_idxes"])
@pytest.mark.parametrize("pca, dim", [(True, 512), (False, 4096)])
def test_load_coco_data_layout(tmp_path, idx_key, pca, dim):
    folder = write_coco_folder(tmp_path / "d", idx_key=idx_key)
    data = coco.load_coco_data(folder, pca_features=pca)
    assert data["train_features"].shape == (12, dim) and data["train_features"].dtype == np.float32
    assert data["val_features"].shape == (6, dim)
    assert data["train_captions"].shape == (36, 17) and data["train_image_idxs"].shape == (36,)
    assert data["val_captions"].shape == (18, 17)
    assert data["train_urls"].shape == (12,) and data["val_urls"][0] == "http://example.org/val/0.jpg"
    assert len(data["word_to_idx"]) == len(data["idx_to_word"]) == 13


def test_max_train_subsamples_reproducibly(coco_folder):
    a = coco.load_coco_data(coco_folder, max_train=5, seed=3)
    b = coco.load_coco_data(coco_folder, max_train=5, seed=3)
    assert a["train_captions"].shape == (5, 17)
    np.testing.assert_array_equal(a["train_captions"], b["train_captions"])
    with pytest.raises(ValueError, match="only 36"):
        coco.load_coco_data(coco_folder, max_train=100)


def test_sample_minibatch_and_decode(coco_folder):
    data = coco.load_coco_data(coco_folder)
    captions, features, urls = coco.sample_coco_minibatch(data, batch_size=4, split="val", seed=0)
    assert captions.shape == (4, 17) and features.shape == (4, 512) and urls.shape == (4,)
    text = coco.decode_captions(captions, data["idx_to_word"])
    assert len(text) == 4 and all(t.startswith("<START> a ") and t.endswith(" <END>") for t in text)
    single = coco.decode_captions(np.array([1, 4, 5, 2, 0, 9]), data["idx_to_word"])
    assert single == "<START> a cat <END>"  # stops at <END>, drops <NULL>


def test_missing_file_names_it_and_says_how_to_get_data(coco_folder):
    (coco_folder / "val2014_vgg16_fc7_pca.h5").unlink()
    with pytest.raises(coco.CocoDataError) as error:
        coco.load_coco_data(coco_folder)
    message = str(error.value)
    assert "val2014_vgg16_fc7_pca.h5" in message and "no such file" in message
    assert "get_assignment3_data.sh" in message


def test_not_hdf5_is_reported_not_a_traceback(coco_folder):
    (coco_folder / "coco2014_captions.h5").write_text("not hdf5")
    with pytest.raises(coco.CocoDataError, match="coco2014_captions.h5.*h5py cannot open"):
        coco.load_coco_data(coco_folder)


def test_missing_dataset_key(coco_folder):
    with h5py.File(coco_folder / "coco2014_captions.h5", "a") as f:
        del f["val_image_idxs"]
    with pytest.raises(coco.CocoDataError, match="val_image_idxs"):
        coco.read_captions(coco_folder)


def test_wrong_features_dataset(coco_folder):
    with h5py.File(coco_folder / "train2014_vgg16_fc7_pca.h5", "w") as f:
        f["feats"] = np.zeros((12, 512), dtype=np.float32)
    with pytest.raises(coco.CocoDataError, match="'features'"):
        coco.load_coco_data(coco_folder)


def test_captions_outside_vocabulary_and_images_out_of_range(coco_folder):
    with h5py.File(coco_folder / "coco2014_captions.h5", "a") as f:
        f["train_captions"][0, 3] = 999
    with pytest.raises(coco.CocoDataError, match="id 999"):
        coco.load_coco_data(coco_folder)


def test_image_index_beyond_features(tmp_path):
    folder = write_coco_folder(tmp_path / "d")
    with h5py.File(folder / "coco2014_captions.h5", "a") as f:
        f["val_image_idxs"][0] = 50
    with pytest.raises(coco.CocoDataError, match=r"val_image_idxs in \[0, 6\)"):
        coco.load_coco_data(folder)


def test_bad_vocab(coco_folder):
    (coco_folder / "coco2014_vocab.json").write_text(json.dumps({"idx_to_word": ["a"]}))
    with pytest.raises(coco.CocoDataError, match="word_to_idx"):
        coco.read_vocab(coco_folder)
    (coco_folder / "coco2014_vocab.json").write_text("{broken")
    with pytest.raises(coco.CocoDataError, match="valid JSON"):
        coco.read_vocab(coco_folder)


def test_url_file_holds_one_line_per_image(coco_folder):
    urls = coco_folder / "val2014_urls.txt"
    lines = urls.read_text().splitlines()
    urls.write_text("\n".join(lines) + "\n\n\n")  # trailing blank lines are not images
    assert coco.load_coco_data(coco_folder)["val_urls"].tolist() == lines
    # A blank line inside would shift every later URL to the wrong image: counted, so refused.
    urls.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    message = f"val2014_urls.txt: expected {len(lines)} lines.*found {len(lines) + 1}"
    with pytest.raises(coco.CocoDataError, match=message):
        coco.load_coco_data(coco_folder)
