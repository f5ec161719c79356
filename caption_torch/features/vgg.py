"""VGG-16 as cs231n used it for captioning: ImageNet weights, the 4096-d fc7 activation as the image's feature.

The network is defined here with torchvision's module layout (``features.N`` and
``classifier.N`` keys), so torchvision's published weights file ``vgg16-397923af.pth``
loads with ``strict=True`` without importing torchvision (its wheels need the CUDA build
of torch). fc7 is the output of the classifier's second ReLU::

    image (3, 224, 224) ─► 13 conv3x3+ReLU, 5 max-pools ─► (512, 7, 7) ─► adaptive avg-pool 7x7
      ─► flatten 25088 ─► fc6 Linear+ReLU ─► dropout ─► fc7 Linear+ReLU ═► (4096,) the feature

Weights come from one of three places, recorded as a :class:`WeightsSource`:

* ``"imagenet"``: downloaded once by ``torch.hub.load_state_dict_from_url`` (its hash
  prefix checked), then read from torch's hub cache;
* a local file path: a copy of the same file for machines without internet, checked
  against the same hash prefix;
* ``"random"``: a seeded random initialisation, a TEST backbone that only exercises the
  pipeline (its features carry little of what an image shows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHTS_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
WEIGHTS_HASH_PREFIX = "397923af"  # the first digits of the file's SHA-256, as torch.hub checks them
RANDOM_WEIGHTS = "random"
IMAGENET_WEIGHTS = "imagenet"
TEST_BACKBONE_LABEL = "TEST backbone: randomly initialised VGG-16 (captions test the pipeline, not quality)"

# Configuration "D" of Simonyan & Zisserman: output channels of each 3x3 conv, "M" a 2x2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
FC7_DIM = 4096
FC7_LAYERS = 5  # classifier[0:5]: fc6, ReLU, Dropout, fc7, ReLU


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, or not torchvision's VGG-16."""


class VGG16(nn.Module):
    """VGG-16 with torchvision's parameter names; :meth:`fc7` is the captioning feature.

    Args:
        num_classes: width of the last layer (1000 for ImageNet's weights).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in VGG16_LAYERS:
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, FC7_DIM),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(FC7_DIM, FC7_DIM),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(FC7_DIM, num_classes),
        )

    def fc7(self, images: Tensor) -> Tensor:
        """(B, 3, 224, 224) normalised images -> (B, 4096) fc7 activations (after its ReLU).

        Any memory format works; :func:`build_backbone`'s model is channels_last, fastest with channels_last input.
        """
        x = torch.flatten(self.avgpool(self.features(images)), 1)
        return self.classifier[:FC7_LAYERS](x)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_classes) class scores, as torchvision's VGG."""
        return self.classifier(torch.flatten(self.avgpool(self.features(images)), 1))


def random_init(model: VGG16, seed: int) -> VGG16:
    """Initialise ``model`` reproducibly from ``seed`` (torchvision's scheme: Kaiming convs, N(0, 0.01) linears).

    The same seed gives the same weights on any machine: they are drawn on the CPU from a
    generator of their own, never from the global one.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
                module.bias.zero_()
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.01, generator=generator)
                module.bias.zero_()
    return model


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights came from, as recorded beside the features it made.

    ``kind`` is ``"imagenet"`` (torch.hub download), ``"file"`` (a local copy at ``path``) or
    ``"random"`` (seeded with ``seed``); ``sha256`` is the weights file's full hash (None for random).
    """

    kind: str
    path: str | None = None
    sha256: str | None = None
    seed: int | None = None

    @property
    def is_test_backbone(self) -> bool:
        return self.kind == RANDOM_WEIGHTS

    def describe(self) -> str:
        """One line for logs and pages, e.g. ``"VGG-16 ImageNet weights vgg16-397923af.pth (sha256 397923af...)"``."""
        if self.is_test_backbone:
            return f"{TEST_BACKBONE_LABEL}, seed {self.seed}"
        return f"VGG-16 ImageNet weights {Path(self.path or WEIGHTS_URL).name} (sha256 {self.sha256})"

    def record(self) -> dict:
        """The JSON-able record written beside the features."""
        record = {"kind": self.kind, "url": None if self.is_test_backbone else WEIGHTS_URL}
        record |= {"path": self.path, "sha256": self.sha256, "seed": self.seed}
        if self.is_test_backbone:
            record["label"] = TEST_BACKBONE_LABEL
        return record

    @classmethod
    def from_record(cls, record: dict) -> "WeightsSource":
        return cls(record["kind"], record.get("path"), record.get("sha256"), record.get("seed"))


def _check_state_dict(state_dict, where: str) -> dict:
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{where}: expected a VGG-16 state dict, found a {type(state_dict).__name__}")
    expected = VGG16().state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"{where}: not torchvision's VGG-16 weights (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{where}: {key} has shape {tuple(state_dict[key].shape)}, VGG-16 needs {tuple(tensor.shape)}"
            )
    return state_dict


def load_local_weights(path: Path | str, expected_sha256: str | None = None) -> tuple[dict, str]:
    """A local copy of ``vgg16-397923af.pth``: ``(state_dict, sha256)``, its hash checked as torch.hub checks it.

    Args:
        expected_sha256: the full hash it must have (a recorded one), else its prefix must be 397923af.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file (download {WEIGHTS_URL})")
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise WeightsError(f"--weights {path}: sha256 {digest[:16]}... is not the recorded {expected_sha256[:16]}...")
    if not digest.startswith(WEIGHTS_HASH_PREFIX):
        raise WeightsError(
            f"--weights {path}: sha256 begins {digest[:8]}, not {WEIGHTS_HASH_PREFIX} "
            f"(torchvision's {Path(WEIGHTS_URL).name}); the file is damaged or another one"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign files
        raise WeightsError(f"--weights {path}: cannot be loaded ({' '.join(str(error).split())[:200]})") from None
    return _check_state_dict(state_dict, f"--weights {path}"), digest


def load_hub_weights() -> tuple[dict, str]:
    """torchvision's ImageNet weights via torch.hub (downloaded once, hash prefix checked): ``(state_dict, sha256)``."""
    try:
        state_dict = torch.hub.load_state_dict_from_url(
            WEIGHTS_URL, map_location="cpu", check_hash=True, weights_only=True
        )
    except Exception as error:  # no network: URLError; a damaged download: RuntimeError
        raise WeightsError(
            f"cannot get the VGG-16 weights from {WEIGHTS_URL} ({' '.join(str(error).split())[:200]}); "
            "download the file elsewhere and pass it with --weights PATH"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(WEIGHTS_URL).name
    return _check_state_dict(state_dict, WEIGHTS_URL), file_sha256(cached)


def build_backbone(weights: str, seed: int = 0, expected_sha256: str | None = None) -> tuple[VGG16, WeightsSource]:
    """The eval-mode VGG-16 and where its weights came from.

    Args:
        weights: ``"imagenet"`` (torch.hub), ``"random"`` (seeded TEST backbone) or a path to a local copy.
        seed: seed of the random initialisation.
        expected_sha256: for a file, the full hash it must have (the one a data folder recorded).
    """
    model = VGG16()
    if weights == RANDOM_WEIGHTS:
        model = random_init(model, seed).to(memory_format=torch.channels_last)
        return model.eval(), WeightsSource(RANDOM_WEIGHTS, seed=seed)
    if weights == IMAGENET_WEIGHTS:
        state_dict, digest = load_hub_weights()
        if expected_sha256 is not None and digest != expected_sha256:
            raise WeightsError(
                f"the cached {WEIGHTS_URL} has sha256 {digest[:16]}..., not the recorded {expected_sha256[:16]}..."
            )
        source = WeightsSource(IMAGENET_WEIGHTS, sha256=digest)
    else:
        state_dict, digest = load_local_weights(weights, expected_sha256)
        source = WeightsSource("file", path=str(Path(weights).resolve()), sha256=digest)
    model.load_state_dict(state_dict, strict=True)
    return model.to(memory_format=torch.channels_last).eval(), source
