"""Shared fixtures: a small folder in cs231n's coco_captioning layout, written by hand.

It is independent of caption_torch.data.synthetic.generate, so the reader is tested against the
layout itself (both spellings of the image-index key, PCA and full features).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "on", "the", "mat", "sofa", "red", "big"]


def write_coco_folder(
    root: Path,
    num_train_images: int = 12,
    num_val_images: int = 6,
    captions_per_image: int = 3,
    idx_key: str = "image_idxs",
    pca_dim: int = 512,
    full_dim: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny dataset in cs231n's layout; features encode which animal a caption is about."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    word_to_idx = {w: i for i, w in enumerate(WORDS)}
    (root / "coco2014_vocab.json").write_text(json.dumps({"idx_to_word": WORDS, "word_to_idx": word_to_idx}))
    with h5py.File(root / "coco2014_captions.h5", "w") as f:
        for split, num_images in (("train", num_train_images), ("val", num_val_images)):
            animals = rng.integers(0, 2, size=num_images)  # 0: cat, 1: dog
            captions, image_idxs = [], []
            for image in range(num_images):
                for _ in range(captions_per_image):
                    place = rng.choice(["mat", "sofa"])
                    words = ["a", ["cat", "dog"][animals[image]], "on", "the", place]
                    ids = [1] + [word_to_idx[w] for w in words] + [2]
                    captions.append(ids + [0] * (17 - len(ids)))
                    image_idxs.append(image)
            f[f"{split}_captions"] = np.asarray(captions, dtype=np.int32)
            f[f"{split}_{idx_key}"] = np.asarray(image_idxs, dtype=np.int32)
            for dim, suffix in ((pca_dim, "_pca"), (full_dim, "")):
                features = rng.normal(size=(num_images, dim)).astype(np.float32)
                features[:, 0] = animals * 4 - 2
                with h5py.File(root / f"{split}2014_vgg16_fc7{suffix}.h5", "w") as ff:
                    ff["features"] = features
            (root / f"{split}2014_urls.txt").write_text(
                "".join(f"http://example.org/{split}/{i}.jpg\n" for i in range(num_images))
            )
    return root


@pytest.fixture
def coco_folder(tmp_path: Path) -> Path:
    return write_coco_folder(tmp_path / "coco_captioning")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: one thread avoids oversubscribing a busy machine, where every parallel region
    can stall waiting for a core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
