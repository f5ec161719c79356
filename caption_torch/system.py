"""CaptioningSystem: the LightningModule that trains and validates a CaptioningRNN.

The ``nn.Module`` (``model.py``) owns parameters, loss and sampling; this system
owns optimisation (Adam with cs231n's per-epoch learning-rate decay), logging and
metrics (val loss over every reference caption, val BLEU-1..4 of greedy samples
against all references of each image).
"""

from __future__ import annotations

from typing import Mapping

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from .bleu import CocoBLEUScore
from .data import CaptionBatch, ImageBatch
from .metrics import caption_text
from .model import CaptioningRNN

BLEU_ORDERS = (1, 2, 3, 4)


class CaptioningSystem(L.LightningModule):
    """Lightning wrapper of :class:`CaptioningRNN`.

    Args:
        word_to_idx: the vocabulary (saved in the checkpoint, so a checkpoint is self-contained).
        input_dim, wordvec_dim, hidden_dim, cell_type: as :class:`CaptioningRNN`.
        lr: Adam's learning rate.
        lr_decay: multiply the learning rate by this after every epoch (cs231n's ``lr_decay``).
        max_length: longest caption generated during validation.
    """

    def __init__(
        self,
        word_to_idx: Mapping[str, int],
        input_dim: int = 512,
        wordvec_dim: int = 256,
        hidden_dim: int = 512,
        cell_type: str = "rnn",
        lr: float = 5e-3,
        lr_decay: float = 0.95,
        max_length: int = 30,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        self.save_hyperparameters()
        self.model = CaptioningRNN(dict(word_to_idx), input_dim, wordvec_dim, hidden_dim, cell_type)
        self.idx_to_word = [word for word, _ in sorted(self.model.word_to_idx.items(), key=lambda item: item[1])]
        self.val_bleu = torch.nn.ModuleList(CocoBLEUScore(n_gram=n) for n in BLEU_ORDERS)  # pycocoevalcap's BLEU
        self.val_loss = MeanMetric()

    def forward(self, features: Tensor) -> Tensor:
        """Greedy captions (N, max_length) for (N, D) features."""
        return self.model.sample(features, self.hparams.max_length)

    def training_step(self, batch: CaptionBatch, batch_idx: int) -> Tensor:
        loss = self.model.loss(batch.features, batch.captions)
        # Non-finite losses are caught by callbacks.LossHistory, which syncs every few steps, not every step.
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.captions.shape[0])
        return loss

    def validation_step(self, batch: ImageBatch, batch_idx: int) -> None:
        references = batch.references  # (B, R, T)
        present = references[:, :, 0] >= 0  # (B, R): which reference slots hold a caption
        repeated = batch.features[:, None].expand(-1, references.shape[1], -1)[present]  # (C, D)
        captions = references[present]  # (C, T)
        loss = self.model.loss(repeated, captions)
        # A mean over captions, weighted by each batch's count, summed across processes: images
        # have 5 to 7 captions, so a plain mean of per-process means would not be a one-device run's.
        self.val_loss.update(loss, weight=captions.shape[0])
        self.log("val_loss", self.val_loss, prog_bar=True, on_step=False, on_epoch=True)

        samples = self.model.sample(batch.features, self.hparams.max_length)  # (B, L)
        candidates = [caption_text(row, self.idx_to_word) for row in samples.tolist()]
        targets = [
            [caption_text(ref, self.idx_to_word) for ref, ok in zip(refs, oks) if ok]
            for refs, oks in zip(references.tolist(), present.tolist())
        ]
        for n, bleu in zip(BLEU_ORDERS, self.val_bleu):
            bleu.update(candidates, targets)
            self.log(f"val_bleu{n}", bleu, on_step=False, on_epoch=True, batch_size=len(candidates))

    def configure_optimizers(self):
        # fused: one kernel for all parameters (10x faster than the foreach default on a 2-core CPU).
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
        decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.hparams.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}
