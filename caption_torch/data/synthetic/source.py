"""The embedded dataset as a data source: cs231n's folder layout plus one scene description per image.

The generator (``generate.py``) writes cs231n's files and, per split, ``{split}2014_scenes.json``:
the scenes the features and captions were made from, which :mod:`.scenes` draws offline. This
source reads the folder as :class:`~caption_torch.data.cs231n.Cs231nFolder` does, and gives each
image its scene instead of its (placeholder) URL.
"""

from __future__ import annotations

from pathlib import Path

from caption_torch.data import cs231n as coco
from caption_torch.data import schema
from caption_torch.data.protocol import ImageSource, SplitCaptions
from caption_torch.data.synthetic import generate
from caption_torch.data.synthetic.generate import scenes_file

# One scene per image, each of the types the embedded dataset's scenes are made of.
SCENES_TYPE = schema.JsonType("a JSON list of scenes", lambda v: isinstance(v, list), items=schema.scene_types())


def read_scenes(folder: Path | str, split: str, num_images: int) -> list[dict]:
    """The scene of each of a split's ``num_images`` image rows, checked by the data schema, or a CocoDataError."""
    check = schema.Validator(Path(folder), coco.HOW_TO_GET)
    path = check.path(schema.SCENES, split)
    try:
        scenes = check.read_json(path, SCENES_TYPE, "a JSON list of scenes")
        if len(scenes) != num_images:
            raise schema.SchemaError(path, None, f"{num_images} scenes, one per feature row", f"{len(scenes)}")
    except schema.SchemaError as error:
        raise coco.CocoDataError(str(error)) from None
    return scenes


class SyntheticSource(coco.Cs231nFolder):
    """The embedded dataset: generated into the cache on first use (``size``, ``seed``), or read from ``folder``.

    Args:
        size: ``"tiny"``, ``"default"`` or ``"coco"`` (see ``generate.SIZES``); ignored with ``folder``.
        seed: the generator's seed; ignored with ``folder``.
        folder: a folder ``generate.py`` wrote (None: the cached one of ``size`` and ``seed``).
        pca_features: the 512-d fc7-PCA features; the embedded data has no other unless written with
            ``--full-features``.
    """

    def __init__(self, size: str = "default", seed: int = 0, folder: Path | str | None = None,
                 pca_features: bool = True) -> None:  # fmt: skip
        self.generated = folder is None  # generated into (and read from) the cache
        if self.generated and not pca_features:
            raise ValueError("the 4096-d fc7 features (--full-features) need a coco_captioning folder "
                             "(--data-dir): the embedded dataset has only the 512-d fc7-PCA ones")  # fmt: skip
        self.size, self.seed = size, seed
        super().__init__(generate.dataset_dir(size, seed) if folder is None else folder, pca_features)
        self.named_folder = None if self.generated else self.folder

    @staticmethod
    def holds(folder: Path | str) -> bool:
        """Whether ``folder`` is one the generator wrote: it has a scenes file."""
        return any((Path(folder) / scenes_file(split)).is_file() for split in coco.SPLITS)

    def _has_scenes(self, split: str) -> bool:
        return (self.folder / scenes_file(split)).is_file()

    def __repr__(self) -> str:
        return (
            f"SyntheticSource({self.size!r}, seed={self.seed})" if self.generated else f"SyntheticSource({self.folder})"
        )

    def prepare(self) -> None:
        if self.generated:
            generate.ensure_synthetic_dataset(self.size, self.seed)

    def vocabulary(self):
        if self.generated and not generate.is_complete(self.folder):
            raise coco.CocoDataError(
                f"{self.folder}: the embedded dataset is not generated yet; "
                "call prepare_data() before setup() (Lightning's Trainer does)"
            )
        return super().vocabulary()

    def check(self, splits: dict[str, SplitCaptions], word_to_idx: dict[str, int]) -> tuple[dict[str, int], int]:
        num_images, width = super().check(splits, word_to_idx)
        for split, count in num_images.items():  # the printed samples use them after training: check them before
            if self._has_scenes(split):
                read_scenes(self.folder, split, count)
        return num_images, width

    def image_sources(self, split: str) -> list[ImageSource]:
        """Each image's scene; a split without a scenes file (a folder edited by hand) has its URLs."""
        if not self._has_scenes(split):
            return super().image_sources(split)
        return [ImageSource(scene=scene) for scene in read_scenes(self.folder, split, self.num_images(split))]
