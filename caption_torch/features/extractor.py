"""Features of new image files made exactly as a prepared folder recorded: same backbone, weights and PCA."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import DataLoader

from caption_torch.features import vgg
from caption_torch.features.extract import collate_images, default_device, fc7_of_tensors
from caption_torch.features.images import ImageFiles
from caption_torch.features.pca import Pca
from caption_torch.features.record import RECORD_FILE, RecordError, read_record


class RecordedExtractor:
    """The backbone and PCA a prepared folder's ``features.json`` names, ready to turn image files into features.

    Args:
        data_dir: the prepared folder.
        pca_features: reduce fc7 with the folder's PCA (as its ``*_fc7_pca.h5``) or not (as its ``*_fc7.h5``).
        weights: a local copy of the weights file to read instead of the recorded place (its hash must match).

    Raises:
        RecordError: the folder has no record (its features were made elsewhere).
        vgg.WeightsError: the recorded weights cannot be found or no longer match their hash.
    """

    def __init__(self, data_dir: Path | str, pca_features: bool = True, weights: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        record = read_record(self.data_dir)
        if record is None:
            raise RecordError(
                f"{self.data_dir} has no {RECORD_FILE}: its features were made elsewhere (cs231n's files do not "
                "include their PCA basis), so a new image's features cannot be made to match them; train on a "
                "folder written by python -m caption_torch.prepare"
            )
        self.record = record
        self.source = vgg.WeightsSource.from_record(record["weights"])
        if self.source.is_test_backbone:
            self.model, _ = vgg.build_backbone(vgg.RANDOM_WEIGHTS, seed=self.source.seed)
        else:
            where = weights or (self.source.path if self.source.kind == "file" else vgg.IMAGENET_WEIGHTS)
            self.model, _ = vgg.build_backbone(where, expected_sha256=self.source.sha256)
        self.pca = Pca.load(self.data_dir / record["pca"]["file"]) if pca_features else None
        self.device = default_device()
        self.model.to(self.device)

    def features(
        self, paths: Sequence[Path | str], batch_size: int = 16, workers: int = 0
    ) -> tuple[np.ndarray, list, dict]:
        """``(features (N', D) float32, the N' usable paths, {path: reason} for the others)``."""
        rows, kept, problems = [], [], {}
        loader = DataLoader(ImageFiles(paths), batch_size=batch_size, num_workers=workers, collate_fn=collate_images)
        start = 0
        for images, reasons in loader:
            fc7 = fc7_of_tensors(self.model, images, self.device)
            for i, reason in enumerate(reasons):
                if reason:
                    problems[paths[start + i]] = reason
                else:
                    rows.append(fc7[i])
                    kept.append(paths[start + i])
            start += len(reasons)
        fc7 = np.stack(rows) if rows else np.zeros((0, vgg.FC7_DIM), dtype=np.float32)
        return (self.pca.transform(fc7) if self.pca is not None else fc7), kept, problems
