"""PCA of fc7 features, as cs231n reduced VGG-16's 4096-d fc7 to 512: fitted on the train split, applied to all.

The fit never holds more than one chunk of rows in float64::

    S     = sum over chunks of X_c^T X_c,  mean = sum of rows / N        (float64, one pass)
    C     = (S - N mean mean^T) / (N - 1)
    eigh(C) -> the top k eigenvectors (components, k x D) and eigenvalues (explained variance)

Each component's sign is fixed (its largest-magnitude entry positive), so the same
features always give the same bytes. Reduced features are ``(x - mean) @ components.T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

PCA_FILE = "vgg16_fc7_pca_basis.h5"  # beside the feature files: mean (D,), components (k, D), explained_variance (k,)
CHUNK_ROWS = 8192


class PcaError(ValueError):
    """A PCA that cannot be fitted (too few rows for the dimension asked)."""


@dataclass(frozen=True)
class Pca:
    """A fitted PCA: ``mean`` (D,) float64, ``components`` (k, D) float64, ``explained_variance`` (k,) float64."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, k) float32 reduced features (computed in float64)."""
        return ((np.asarray(features, dtype=np.float64) - self.mean) @ self.components.T).astype(np.float32)

    def save(self, path: Path | str) -> None:
        """Write the basis as HDF5 with fixed settings (no timestamps), so equal fits give equal bytes."""
        with h5py.File(path, "w", track_order=False) as f:
            for name in ("mean", "components", "explained_variance"):
                f.create_dataset(name, data=getattr(self, name), track_times=False)

    @classmethod
    def load(cls, path: Path | str) -> "Pca":
        with h5py.File(path, "r") as f:
            names = ("mean", "components", "explained_variance")
            return cls(*(np.asarray(f[name], dtype=np.float64) for name in names))


def check_dim(dim: int, num_rows: int, width: int) -> None:
    """Refuse a dimension the train split cannot support: above its row count (or the feature width)."""
    if dim > num_rows:
        raise PcaError(
            f"--pca-dim {dim} is more than the {num_rows} train images: PCA can find at most "
            f"{num_rows} directions; lower --pca-dim or add images"
        )
    if dim > width:
        raise PcaError(f"--pca-dim {dim} is more than the feature width {width}")


def fit_pca(features, dim: int, chunk_rows: int = CHUNK_ROWS) -> Pca:
    """Fit a ``dim``-component PCA on (N, D) rows (a NumPy array or an HDF5 dataset), accumulating in float64.

    Returns:
        The :class:`Pca` whose components are the covariance's top ``dim`` eigenvectors.
    """
    num_rows, width = features.shape
    check_dim(dim, num_rows, width)
    if num_rows < width:
        fitted = _fit_by_gram(np.asarray(features, dtype=np.float64), dim)
        if fitted is not None:
            return fitted
    total = np.zeros(width)
    scatter, product = np.zeros((width, width)), np.empty((width, width))  # one (D, D) buffer for every chunk
    for begin in range(0, num_rows, chunk_rows):
        chunk = np.asarray(features[begin : begin + chunk_rows], dtype=np.float64)
        total += chunk.sum(axis=0)
        # NumPy sees A^T A and calls BLAS's syrk: half the products of a general GEMM.
        scatter += np.matmul(chunk.T, chunk, out=product)
    mean = total / num_rows
    # float64 keeps the cancellation in X^T X - N mean mean^T harmless (fc7's mean is not far above its spread).
    covariance = (scatter - num_rows * np.outer(mean, mean)) / max(num_rows - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.from_numpy(covariance))  # ascending
    top = torch.flip(eigenvectors[:, -dim:], dims=(1,)).T.contiguous().numpy()  # (dim, D), largest first
    variance = torch.flip(eigenvalues[-dim:], dims=(0,)).clamp_min(0).numpy()
    return _with_fixed_signs(mean, top, variance.copy())


def _fit_by_gram(rows: np.ndarray, dim: int) -> Pca | None:
    """The same PCA from the (N, N) Gram matrix when N < D (far cheaper); None if a component asked has no variance.

    With X centred, X X^T = U diag(l) U^T gives the covariance's eigenvectors X^T u / sqrt(l), eigenvalues l / (N - 1).
    """
    mean = rows.mean(axis=0)
    centred = torch.from_numpy(rows - mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T)
    eigenvalues, eigenvectors = torch.flip(eigenvalues[-dim:], (0,)), torch.flip(eigenvectors[:, -dim:], (1,))
    if bool((eigenvalues <= 1e-9 * eigenvalues[0].clamp_min(1e-300)).any()):
        return None  # the centred rows span fewer than dim directions: the covariance route picks the rest
    components = (centred.T @ eigenvectors / eigenvalues.sqrt()).T.contiguous().numpy()
    return _with_fixed_signs(mean, components, (eigenvalues / max(rows.shape[0] - 1, 1)).numpy().copy())


def _with_fixed_signs(mean: np.ndarray, components: np.ndarray, variance: np.ndarray) -> Pca:
    """The PCA with each component's largest-magnitude entry positive (an eigenvector's sign is arbitrary)."""
    largest = np.abs(components).argmax(axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), largest])
    return Pca(mean, components * signs[:, None], variance)
