"""VGG-16 fc7 features from image files: the network, the decoding of every image kind, PCA, resumable extraction."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from caption_torch.features import images as image_io
from caption_torch.features import vgg
from caption_torch.features.extract import extract_resumable
from caption_torch.features.pca import PcaError, fit_pca


@pytest.fixture(scope="module")
def backbone() -> vgg.VGG16:
    return vgg.random_init(vgg.VGG16(), seed=3).eval()


def plain_vgg16_to_fc7() -> nn.Sequential:
    """VGG-16 as published (13 conv3x3 + ReLU in 5 blocks with 2x2 max-pools), written out layer by layer, to fc7."""

    def block(cin, cout, convs):
        layers = []
        for i in range(convs):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU()]
        return layers + [nn.MaxPool2d(2, 2)]

    return nn.Sequential(
        *block(3, 64, 2), *block(64, 128, 2), *block(128, 256, 3), *block(256, 512, 3), *block(512, 512, 3),
        nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
        nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
    ).eval()  # fmt: skip


def test_layout_is_torchvisions():
    keys = list(vgg.VGG16().state_dict())
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = [f"features.{i}.{p}" for i in conv_indices for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert keys == expected


def test_fc7_equals_plain_vgg16(backbone):
    plain = plain_vgg16_to_fc7()
    with torch.no_grad():
        for target, source in zip(plain.parameters(), backbone.parameters()):
            target.copy_(source)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = plain(images)
        found = backbone.fc7(images)
    assert found.shape == (2, 4096)
    assert (found >= 0).all()
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)


def _photo(width=300, height=200, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def independent_preprocess(image: Image.Image) -> torch.Tensor:
    """Shorter side 256 (bilinear), centre 224 crop, ImageNet normalisation, written out with NumPy."""
    w, h = image.size
    scale = 256 / min(w, h)
    size = (256, int(h * scale)) if w <= h else (int(w * scale), 256)
    array = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float64) / 255
    top, left = round((size[1] - 224) / 2), round((size[0] - 224) / 2)
    array = (array[top : top + 224, left : left + 224] - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32))


def test_extracted_rows_equal_plain_vgg16_on_the_files(tmp_path, backbone):
    paths = []
    for i, size in enumerate([(300, 200), (180, 320), (256, 256)]):
        paths.append(tmp_path / f"{i}.png")
        _photo(*size, seed=i).save(paths[-1])
    rows, problems = extract_resumable(backbone, paths, tmp_path / "work", {"test": 1}, batch_size=2, workers=0,
                                       device=torch.device("cpu"))  # fmt: skip
    plain = plain_vgg16_to_fc7()
    with torch.no_grad():
        for target, source in zip(plain.parameters(), backbone.parameters()):
            target.copy_(source)
        expected = plain(torch.stack([independent_preprocess(Image.open(p).convert("RGB")) for p in paths]))
    assert problems == {}
    np.testing.assert_allclose(np.asarray(rows), expected.numpy(), rtol=1e-4, atol=1e-5)


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_every_image_kind_is_converted_or_named(tmp_path):
    photo = _photo(64, 48)
    kinds = {}
    kinds["grayscale"] = _save(photo.convert("L"), tmp_path / "grey.png")
    kinds["cmyk"] = _save(photo.convert("CMYK"), tmp_path / "cmyk.jpg")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    kinds["palette"] = _save(palette, tmp_path / "palette.png", transparency=0)
    wide = Image.fromarray(np.repeat(np.array([[0, 128 * 257, 65535]], dtype=np.uint16), 16, axis=0))
    kinds["16-bit"] = _save(wide, tmp_path / "wide.png")
    transparent = photo.convert("RGBA")
    transparent.putalpha(0)
    kinds["alpha"] = _save(transparent, tmp_path / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    kinds["exif"] = _save(_photo(64, 32), tmp_path / "rotated.jpg", exif=exif)
    for name, path in kinds.items():
        image = image_io.load_rgb(path)
        assert image.mode == "RGB", name
    assert image_io.load_rgb(kinds["exif"]).size == (32, 64)
    assert np.asarray(image_io.load_rgb(kinds["16-bit"]))[0, :, 0].tolist() == [0, 128, 255]  # scaled, not clipped
    assert np.asarray(image_io.load_rgb(kinds["alpha"])).min() == 255  # transparent -> white background
    grey = np.asarray(image_io.load_rgb(kinds["grayscale"]))
    assert (grey[..., 0] == grey[..., 2]).all()

    bad = {}
    bad["empty"] = tmp_path / "empty.jpg"
    bad["empty"].write_bytes(b"")
    buffer = io.BytesIO()
    _photo(200, 200).save(buffer, format="JPEG")
    bad["truncated"] = tmp_path / "truncated.jpg"
    bad["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    bad["not an image"] = tmp_path / "notes.jpg"
    bad["not an image"].write_text("not a picture")
    bad["folder"] = tmp_path / "folder.jpg"
    bad["folder"].mkdir()
    bad["bomb"] = _save(Image.new("1", (10_000, 9_000)), tmp_path / "bomb.png")  # 90 M pixels, a few kB
    reasons = {}
    for name, path in bad.items():
        with pytest.raises(image_io.ImageProblem) as problem:
            image_io.load_rgb(path)
        reasons[name] = str(problem.value)
    assert reasons["empty"] == "empty file (0 bytes)"
    assert reasons["bomb"].startswith("decompression bomb")
    assert "truncated" in reasons["truncated"]
    files = image_io.ImageFiles([bad["bomb"], kinds["cmyk"]])
    assert files[0][1].startswith("decompression bomb") and files[1][1] == ""


def test_a_long_thin_image_resizes_only_what_the_crop_keeps(monkeypatch):
    """1 x 20000 pixels (a 60 kB PNG) resized whole is 256 x 5,120,000 pixels (4 GB): only the crop's part is."""
    rng = np.random.default_rng(0)
    resize = Image.Image.resize

    def bounded_resize(self, size, *args, **kwargs):
        if size[0] * size[1] > 16 * 256 * 256:  # an aspect ratio of 16:1
            raise MemoryError(f"resize to {size}")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded_resize)
    for height, width in [(20_000, 1), (1, 20_000)]:
        assert image_io.preprocess(Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))).shape == (
            3, 224, 224)  # fmt: skip
    # 20:1: the crop's pixels are those of resizing the whole image and cropping, within one level of 255.
    std = torch.tensor(image_io.IMAGENET_STD).view(3, 1, 1)
    for height, width in [(400, 20), (20, 400)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))
        size = (256, 5120) if width < height else (5120, 256)
        left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
        whole = resize(image, size, Image.Resampling.BILINEAR).crop((left, top, left + 224, top + 224))
        expected = torch.from_numpy(np.asarray(whole, dtype=np.float32) / 255.0).permute(2, 0, 1)
        got = image_io.preprocess(image) * std + torch.tensor(image_io.IMAGENET_MEAN).view(3, 1, 1)
        assert (got - expected).abs().max() <= 1.01 / 255


def _svd_pca(X: np.ndarray, k: int):
    X = X.astype(np.float64)
    U, S, Vt = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    V = Vt[:k] * np.sign(Vt[np.arange(k), np.abs(Vt[:k]).argmax(axis=1)])[:, None]
    return X.mean(axis=0), V, S[:k] ** 2 / (X.shape[0] - 1)


@pytest.mark.parametrize("rows,width", [(400, 96), (40, 200)], ids=["more rows than width", "fewer rows (Gram)"])
def test_pca_equals_numpy_svd(rows, width):
    rng = np.random.default_rng(1)
    spread = np.geomspace(5, 0.05, width)  # distinct variances: each component is well defined
    X = (rng.standard_normal((rows, width)) * spread + 3 * rng.random(width)).astype(np.float32)
    k = 16
    pca = fit_pca(X, k, chunk_rows=64)  # several chunks
    mean, components, variance = _svd_pca(X, k)
    np.testing.assert_allclose(pca.mean, mean, rtol=1e-5, atol=1e-9)
    assert np.abs(pca.components - components).max() <= 1e-5 * np.abs(components).max()
    np.testing.assert_allclose(pca.explained_variance, variance, rtol=1e-5)
    reduced = pca.transform(X)
    expected = (X.astype(np.float64) - mean) @ components.T
    assert np.abs(reduced - expected).max() <= 1e-5 * np.abs(expected).max()


def test_pca_dimension_above_the_rows_is_refused():
    with pytest.raises(PcaError, match="more than the 10 train images"):
        fit_pca(np.zeros((10, 32), dtype=np.float32), 11)


def _probe_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "probe_backbone.py"
    spec = importlib.util.spec_from_file_location("probe_backbone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_finds_a_value_the_features_hold_and_not_one_they_do_not():
    probe = _probe_script()
    generator = torch.Generator().manual_seed(0)
    labels = [("a", "b", "c")[i % 3] for i in range(90)]
    noise = torch.randn(90, 20, generator=generator, dtype=torch.float64)
    holding = noise.clone()
    holding[:, 0] += 10.0 * torch.tensor([float("abc".index(label)) for label in labels])
    order = torch.randperm(90, generator=generator)
    train, held_out = order[:72], order[72:]
    accuracy, chance = probe.probe_accuracy(holding, labels, train, held_out, 1e-3)
    assert accuracy == 1.0 and 0.0 < chance < 0.6
    accuracy, chance = probe.probe_accuracy(noise, labels, train, held_out, 1e-3)
    assert accuracy < 0.7


def test_probe_command_on_a_few_scenes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAPTION_TORCH_CACHE", str(tmp_path))
    assert _probe_script().main(["--scenes", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "10 scenes, VGG-16 fc7 (random weights), 8 to fit, 2 held out"
    assert [line.split()[0] for line in lines[2:]] == ["setting", "first", "first"]
