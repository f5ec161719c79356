"""Which data source a run reads: the embedded dataset, or the folder ``--data-dir`` names."""

from __future__ import annotations

from pathlib import Path

from caption_torch.data.cs231n import Cs231nFolder
from caption_torch.data.protocol import CaptionSource
from caption_torch.data.synthetic.source import SyntheticSource


def open_source(
    data_dir: Path | str | None = None, synthetic_size: str = "default", pca_features: bool = True
) -> CaptionSource:
    """The source of ``data_dir``: the embedded dataset when None (generated on ``prepare``), a folder the
    embedded dataset's generator wrote (it has scenes), else cs231n's ``coco_captioning`` folder.

    Nothing is read here: a missing or malformed folder is reported when the DataModule sets up.
    """
    if data_dir is None:
        return SyntheticSource(synthetic_size, pca_features=pca_features)
    if SyntheticSource.holds(data_dir):
        return SyntheticSource(folder=data_dir, pca_features=pca_features)
    return Cs231nFolder(data_dir, pca_features)
