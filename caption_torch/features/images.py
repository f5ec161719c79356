"""Image files to VGG-16 inputs, with Pillow: every file either becomes a (3, 224, 224) tensor or a reason why not.

Preprocessing, as for torchvision's ImageNet models::

    file ─► Pillow open (pixel count checked first) ─► EXIF orientation applied ─► RGB (8 bits per channel)
         ─► shorter side resized to 256 (bilinear) ─► centre 224 x 224 crop ─► [0, 1] ─► ImageNet mean/std

Conversions to RGB: grayscale and 1-bit by copying the grey level; palette and CMYK by
Pillow; 16-bit and 32-bit grey by scaling 0..65535 to 0..255; transparency composited on
white (what a viewer shows). Files that cannot be decoded (unreadable, not an image,
empty, truncated) or that would decode to more than ``max_pixels`` pixels (decompression
bombs) are reported as :class:`ImageProblem` with the reason.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

RESIZE_TO = 256  # shorter side after resizing
CROP_TO = 224  # side of the centre crop the network sees
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Beyond this resized side (an aspect ratio over 16:1), only the crop's source is resized (within 1 of the same pixels).
MAX_RESIZED_SIDE = 16 * RESIZE_TO
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (a 1024 MiB 24-bit image / 4 / 3)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_GREY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageProblem(Exception):
    """An image file that cannot be used; ``str()`` is the reason, for the list of skipped files."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (see the module docstring for each conversion)."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F":
            values = values / 257.0  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path | str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file to an upright 8-bit RGB Pillow image.

    Raises:
        ImageProblem: with the reason, for any file that cannot be used.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageProblem(f"decompression bomb: {width} x {height} pixels, more than {max_pixels}")
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright).copy()
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageProblem(f"decompression bomb: {error}") from None
    except FileNotFoundError:
        raise ImageProblem("missing file") from None
    except PermissionError:
        raise ImageProblem("unreadable file (permission denied)") from None
    except Image.UnidentifiedImageError:
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
        raise ImageProblem("empty file (0 bytes)" if empty else "not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, struct.error) as error:  # truncated or corrupt data, as decoders say it
        raise ImageProblem(f"cannot decode: {' '.join(str(error).split())[:160]}") from None


def preprocess(image: Image.Image) -> Tensor:
    """8-bit RGB Pillow image -> (3, 224, 224) float32, resized, centre-cropped and ImageNet-normalised."""
    width, height = image.size
    if width <= height:
        size = (RESIZE_TO, int(RESIZE_TO * height / width))
    else:
        size = (int(RESIZE_TO * width / height), RESIZE_TO)
    left = int(round((size[0] - CROP_TO) / 2.0))
    top = int(round((size[1] - CROP_TO) / 2.0))
    if max(size) <= MAX_RESIZED_SIDE:
        image = image.resize(size, Image.Resampling.BILINEAR).crop((left, top, left + CROP_TO, top + CROP_TO))
    else:  # a long, thin image: resize only the part the crop keeps (the whole of 1 x 20000 pixels would be 5 GB)
        scale_x, scale_y = width / size[0], height / size[1]
        box = (left * scale_x, top * scale_y, (left + CROP_TO) * scale_x, (top + CROP_TO) * scale_y)
        image = image.resize((CROP_TO, CROP_TO), Image.Resampling.BILINEAR, box=box)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


class ImageFiles(Dataset):
    """Item i: ``(tensor (3, 224, 224), "")`` for a usable file, ``(zeros, reason)`` for one that is not.

    A bad file never stops a DataLoader: its row is computed from zeros and dropped later by
    whoever reads the reason.
    """

    def __init__(self, paths: Sequence[Path | str], max_pixels: int = MAX_PIXELS) -> None:
        self.paths = [str(path) for path in paths]
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        try:
            return preprocess(load_rgb(self.paths[index], self.max_pixels)), ""
        except ImageProblem as problem:
            return torch.zeros(3, CROP_TO, CROP_TO), str(problem)
