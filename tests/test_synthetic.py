"""The embedded dataset: cs231n's file layout, caption format, vocabulary, determinism,
held-out val combinations, the cache, the CLI, and drawing scenes."""

import json

import h5py
import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: headless, no pyplot
from matplotlib.figure import Figure

from caption_torch.data.synthetic import generate as synthetic
from caption_torch.data.synthetic import scenes, wording
from caption_torch.data.synthetic.generate import SIZES, ensure_synthetic_dataset, write_synthetic_dataset

TINY = SIZES["tiny"]
N_TRAIN_CAPTIONS = TINY.train_images * 5
N_VAL_CAPTIONS = TINY.val_images * 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "tiny", size="tiny", seed=0)


def read_captions(folder):
    with h5py.File(folder / "coco2014_captions.h5", "r") as f:
        return {name: f[name][()] for name in f}


def read_features(folder, split, name="vgg16_fc7_pca"):
    with h5py.File(folder / f"{split}2014_{name}.h5", "r") as f:
        return f["features"][()]


def read_json(path):
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- #
# Layout and formats
# --------------------------------------------------------------------------- #


def test_every_file_and_dataset_of_the_layout_has_its_dtype_and_shape(tiny):
    captions = read_captions(tiny)
    assert set(captions) == {"train_captions", "train_image_idxs", "val_captions", "val_image_idxs"}
    for split, n_captions in (("train", N_TRAIN_CAPTIONS), ("val", N_VAL_CAPTIONS)):
        assert captions[f"{split}_captions"].dtype == np.int32
        assert captions[f"{split}_captions"].shape == (n_captions, 17)
        assert captions[f"{split}_image_idxs"].dtype == np.int32
        assert captions[f"{split}_image_idxs"].shape == (n_captions,)
    for split, n_images in (("train", TINY.train_images), ("val", TINY.val_images)):
        features = read_features(tiny, split)
        assert features.dtype == np.float32 and features.shape == (n_images, 512)
        assert np.isfinite(features).all() and features.std() > 0.5
        urls = (tiny / f"{split}2014_urls.txt").read_text().splitlines()
        assert urls[0] == f"synthetic://{split}2014/000000000" and len(urls) == n_images
        assert len(read_json(tiny / f"{split}2014_scenes.json")) == n_images
        assert not (tiny / f"{split}2014_vgg16_fc7.h5").exists()  # only with full_features=True
    info = read_json(tiny / "synthetic_info.json")
    assert (info["size"], info["seed"], info["format_version"]) == ("tiny", 0, synthetic.FORMAT_VERSION)
    assert not list(tiny.parent.glob(".*partial*"))  # the temporary folder was renamed away


def test_caption_rows_are_start_words_end_then_null_padding(tiny):
    for split in ("train", "val"):
        rows = read_captions(tiny)[f"{split}_captions"]
        assert (rows[:, 0] == 1).all()  # <START>
        assert ((rows == 2).sum(axis=1) == 1).all()  # exactly one <END>
        end_at = (rows == 2).argmax(axis=1)
        after_end = np.arange(17)[None, :] > end_at[:, None]
        assert (rows[after_end] == 0).all()  # <NULL> padding after <END> ...
        assert (rows[~after_end] != 0).all()  # ... and nowhere before it
        assert end_at.min() >= 5 and end_at.max() <= 16  # 4-15 words
        assert (rows[:, 1:] != 1).all()  # <START> only at the start


def test_five_different_captions_per_image_with_image_idxs_in_range(tiny):
    captions = read_captions(tiny)
    for split, n_images in (("train", TINY.train_images), ("val", TINY.val_images)):
        idxs = captions[f"{split}_image_idxs"]
        assert idxs.min() == 0 and idxs.max() == n_images - 1
        assert (np.bincount(idxs, minlength=n_images) == 5).all()
        rows = captions[f"{split}_captions"]
        for image in range(n_images):
            assert len({row.tobytes() for row in rows[idxs == image]}) == 5


def test_vocabulary_is_cs231n_shaped_and_unk_appears(tiny):
    vocab = read_json(tiny / "coco2014_vocab.json")
    idx_to_word, word_to_idx = vocab["idx_to_word"], vocab["word_to_idx"]
    assert idx_to_word[:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert word_to_idx == {word: idx for idx, word in enumerate(idx_to_word)}
    assert 100 <= len(idx_to_word) <= 300
    captions = read_captions(tiny)
    train, val = captions["train_captions"], captions["val_captions"]
    assert train.max() < len(idx_to_word) and val.max() < len(idx_to_word)
    # Every kept word clears the min count in train; the rare words became <UNK>.
    counts = np.bincount(train.ravel(), minlength=len(idx_to_word))
    assert counts[4:].min() >= synthetic.MIN_WORD_COUNT
    assert (train == 3).any() and (val == 3).any()
    # Val is worded with the train vocabulary, up to the rare words.
    val_words = val[val > 2]
    assert (val_words == 3).mean() < 0.05


def test_no_caption_is_longer_than_15_words_even_for_the_wordiest_scenes():
    sampler = synthetic._SceneSampler(synthetic.HeldOut.draw(0))
    rng = np.random.default_rng(1)
    lengths = [
        len(words) for i in range(3000) for words in wording.describe(rng, sampler.sample(rng, novel=i % 2 == 1), 0.0)
    ]
    assert max(lengths) == 15 and min(lengths) >= 4  # long ones are shortened, not cut


# --------------------------------------------------------------------------- #
# Determinism, features, held-out combinations
# --------------------------------------------------------------------------- #


def test_same_seed_same_bytes_other_seed_other_data(tiny, tmp_path):
    again = write_synthetic_dataset(tmp_path / "again", size="tiny", seed=0)
    other = write_synthetic_dataset(tmp_path / "other", size="tiny", seed=1)
    for name, array in read_captions(tiny).items():
        assert read_captions(again)[name].tobytes() == array.tobytes()
    for split in ("train", "val"):
        assert read_features(again, split).tobytes() == read_features(tiny, split).tobytes()
        assert (again / f"{split}2014_scenes.json").read_bytes() == (tiny / f"{split}2014_scenes.json").read_bytes()
        assert not np.allclose(read_features(other, split), read_features(tiny, split))
    assert (again / "coco2014_vocab.json").read_bytes() == (tiny / "coco2014_vocab.json").read_bytes()
    assert read_captions(other)["train_captions"].tobytes() != read_captions(tiny)["train_captions"].tobytes()


def test_features_carry_the_scene_and_generalise_to_val(tiny):
    # Nearest-centroid classification of the setting (12 classes, chance 1/12): centroids from
    # 10 train images per setting, accuracy on val. Well above chance although every val
    # scene is a combination train never had; with 120 images the centroids are still noisy.
    train_settings = [scene["setting"] for scene in read_json(tiny / "train2014_scenes.json")]
    val_settings = [scene["setting"] for scene in read_json(tiny / "val2014_scenes.json")]
    train_features, val_features = read_features(tiny, "train"), read_features(tiny, "val")
    names = sorted(set(train_settings))
    centroids = np.stack([train_features[[s == name for s in train_settings]].mean(0) for name in names])
    distances = ((val_features[:, None, :] - centroids[None]) ** 2).sum(-1)  # (N_val, settings)
    predicted = [names[i] for i in distances.argmin(1)]
    assert np.mean([p == s for p, s in zip(predicted, val_settings)]) > 0.5


def test_full_features_are_4096_nonnegative_and_leave_the_512_unchanged(tiny, tmp_path):
    full = write_synthetic_dataset(tmp_path / "full", size="tiny", seed=0, full_features=True)
    for split, n_images in (("train", TINY.train_images), ("val", TINY.val_images)):
        features = read_features(full, split, "vgg16_fc7")
        assert features.dtype == np.float32 and features.shape == (n_images, 4096)
        assert features.min() == 0 and 0.2 < (features > 0).mean() < 0.8  # post-ReLU, like fc7
        assert read_features(full, split).tobytes() == read_features(tiny, split).tobytes()


def pairs(scene):
    return {("colour_noun", obj["colour"], obj["noun"]) for obj in scene["objects"]} | {
        ("noun_setting", obj["noun"], scene["setting"]) for obj in scene["objects"]
    }


def test_every_val_scene_has_a_combination_no_train_scene_has(tiny):
    train_pairs = set().union(*map(pairs, read_json(tiny / "train2014_scenes.json")))
    val_scenes = read_json(tiny / "val2014_scenes.json")
    assert all(pairs(scene) - train_pairs for scene in val_scenes)
    # ... and these are the recorded held-out pairs, which train never uses.
    info = read_json(tiny / "synthetic_info.json")
    held_out = {("colour_noun", *pair) for pair in info["held_out_colour_noun"]} | {
        ("noun_setting", *pair) for pair in info["held_out_noun_setting"]
    }
    assert not train_pairs & held_out
    assert all(pairs(scene) & held_out for scene in val_scenes)
    # Every noun and every colour still appears in train: only combinations are new.
    train_scenes = read_json(tiny / "train2014_scenes.json")
    assert {obj["colour"] for scene in train_scenes for obj in scene["objects"]} == set(scenes.COLOURS)


def test_scene_dicts_hold_what_drawing_needs(tiny):
    for scene in read_json(tiny / "train2014_scenes.json"):
        assert scene["setting"] in scenes.SETTINGS and 1 <= len(scene["objects"]) <= 2
        assert (scene["relation"] in scenes.RELATIONS) == (len(scene["objects"]) == 2)
        assert 1 <= sum(obj["count"] for obj in scene["objects"]) <= 4
        for obj in scene["objects"]:
            assert obj["shape"] == scenes.NOUN_SHAPES[obj["noun"]]
            assert len(obj["positions"]) == obj["count"]
            assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in obj["positions"])


def test_caption_words_and_scene_tables_name_the_same_things():
    assert set(wording.NOUN_WORDS) == set(scenes.NOUN_SHAPES)
    assert set(wording.SETTING_WORDS) == set(scenes.SETTINGS)
    assert set(wording.COLOUR_WORDS) == set(scenes.COLOURS)
    assert set(wording.RELATION_WORDS) == set(scenes.RELATIONS)
    assert set(wording.SIZE_WORDS) == set(scenes.SIZE_RADIUS)
    assert set(scenes.NOUN_SHAPES.values()) <= set(scenes.SHAPES)


# --------------------------------------------------------------------------- #
# Writing safely, the cache, the CLI, errors
# --------------------------------------------------------------------------- #


def test_ensure_generates_once_then_reuses_the_cache(tmp_path, capsys):
    folder = ensure_synthetic_dataset("tiny", seed=0, cache_dir=tmp_path)
    assert folder.parent == tmp_path and f"v{synthetic.FORMAT_VERSION}" in folder.name and "tiny" in folder.name
    assert "first use only" in capsys.readouterr().err
    stamp = (folder / "coco2014_captions.h5").stat().st_mtime_ns
    assert ensure_synthetic_dataset("tiny", seed=0, cache_dir=tmp_path) == folder
    assert capsys.readouterr().err == ""  # no second generation ...
    assert (folder / "coco2014_captions.h5").stat().st_mtime_ns == stamp  # ... and no rewrite


def test_ensure_uses_the_cache_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTION_TORCH_CACHE", str(tmp_path / "env-cache"))
    folder = ensure_synthetic_dataset("tiny", seed=3)
    assert folder.parent == tmp_path / "env-cache" and (folder / "coco2014_vocab.json").is_file()
    monkeypatch.delenv("CAPTION_TORCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert synthetic.default_cache_dir() == tmp_path / "xdg" / "caption-torch"


def test_an_interrupted_write_leaves_no_folder(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_vocabulary", fail)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "out", size="tiny")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic dataset size 'huge'"):
        write_synthetic_dataset(tmp_path / "a", size="huge")
    with pytest.raises(ValueError, match="unknown synthetic dataset size"):
        ensure_synthetic_dataset("huge", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        write_synthetic_dataset(tmp_path / "b", size="tiny", seed=-1)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken"):
        write_synthetic_dataset(tmp_path / "taken", size="tiny")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_cli_writes_the_dataset_and_rejects_unknown_sizes(tmp_path, capsys):
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    synthetic.main(["--out", str(tmp_path / "empty"), "--size", "tiny", "--seed", "2"])
    assert "Wrote the synthetic tiny dataset" in capsys.readouterr().out
    assert read_json(tmp_path / "empty" / "synthetic_info.json")["seed"] == 2
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "x"), "--size", "huge"])


# --------------------------------------------------------------------------- #
# Drawing
# --------------------------------------------------------------------------- #


def test_draw_scene_writes_a_picture_for_every_relation_and_setting(tiny, tmp_path):
    drawn = {}
    for scene in read_json(tiny / "train2014_scenes.json"):
        drawn.setdefault(scene["relation"], scene)
        drawn.setdefault(scene["setting"], scene)
    assert set(scenes.RELATIONS) | {None} <= set(drawn) and set(scenes.SETTINGS) <= set(drawn)
    figure = Figure(figsize=(8, 8))
    FigureCanvasAgg(figure)
    for i, scene in enumerate(drawn.values()):
        ax = figure.add_subplot(5, 4, i + 1)
        draw_count = len(ax.patches)
        scenes.draw_scene(scene, ax)
        assert len(ax.patches) > draw_count + sum(obj["count"] for obj in scene["objects"])
        assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0
    figure.savefig(tmp_path / "scenes.png")
    picture = matplotlib.image.imread(tmp_path / "scenes.png")
    assert picture.shape[:2] == (800, 800) and picture.std() > 0.05  # 8 x 8 inches at 100 dpi, not blank


def test_draw_scene_rejects_unknown_names():
    scene = {
        "setting": "moon",
        "relation": None,
        "objects": [
            {"noun": "ball", "shape": "circle", "colour": "red", "size": "big", "count": 1, "positions": [[0.5, 0.2]]}
        ],
    }
    figure = Figure()
    with pytest.raises(ValueError, match="unknown setting 'moon'"):
        scenes.draw_scene(scene, figure.add_subplot())
    scene["setting"], scene["objects"][0]["colour"] = "beach", "teal"
    with pytest.raises(ValueError, match="unknown object colour 'teal'"):
        scenes.draw_scene(scene, figure.add_subplot())
