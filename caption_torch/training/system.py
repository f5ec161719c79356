"""CaptioningSystem: the LightningModule that trains any decoder of ``registry.DECODERS`` on its captions.

The decoder (a ``Captioner`` built by ``registry.py``) owns parameters, loss and sampling; this system
owns optimisation (Adam with cs231n's per-epoch learning-rate decay), logging and
metrics (val loss over every reference caption, val BLEU-1..4 and CIDEr-D of greedy
samples against all references of each image). It trains with cross-entropy on captions;
``self_critical.SelfCriticalSystem`` fine-tunes on images with its reward, and shares the rest.
"""

from __future__ import annotations

from typing import Any, Mapping

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from caption_torch.data.datamodule import CaptionBatch, ImageBatch
from caption_torch.metrics.coco import caption_text
from caption_torch.metrics.registry import REWARD_METRIC, VALIDATION_METRICS
from caption_torch.models.registry import CaptionConfig, build_decoder


class CaptioningSystem(L.LightningModule):
    """Lightning wrapper of a decoder (CaptioningRNN for ``rnn``/``lstm``, CaptioningTransformer).

    The checkpoint's ``hyper_parameters`` hold the vocabulary, the feature width and the config's
    fields as flat plain values (:meth:`CaptionConfig.flat`), so ``load_from_checkpoint(...,
    weights_only=True)`` rebuilds the system, from checkpoints of every version.

    Args:
        word_to_idx: the vocabulary (saved in the checkpoint, so a checkpoint is self-contained).
        input_dim: D, the width of the data's image features.
        config: the run's config (default: ``CaptionConfig()``); the whole of it is kept with the
            checkpoint, so a resumed run continues it (the batch size and epochs are the DataModule's
            and the Trainer's).
        **hyperparameters: instead of ``config``, its flat fields as a checkpoint stores them (how
            ``load_from_checkpoint`` calls this); keys that are no field are ignored.
    """

    trains_on_images = False  # its training batches are captions (the DataModule's train_on_images)
    monitor = "val_bleu4"  # the val metric that picks its best checkpoint

    def __init__(
        self,
        word_to_idx: Mapping[str, int],
        input_dim: int,
        config: CaptionConfig | None = None,
        **hyperparameters: Any,
    ) -> None:
        super().__init__()
        if config is not None and hyperparameters:
            raise TypeError(f"give the config or its fields, not both (got {sorted(hyperparameters)})")
        if config is None:
            config = CaptionConfig.from_flat(hyperparameters) if hyperparameters else CaptionConfig()
        self.config = config
        self.save_hyperparameters({"word_to_idx": dict(word_to_idx), "input_dim": input_dim, **config.flat()})
        self.model = build_decoder(dict(word_to_idx), input_dim, config)
        self.idx_to_word = self.model.idx_to_word
        self.val_loss = MeanMetric()
        # val BLEU-1..4 and CIDEr-D (pycocoevalcap's), as the metric registry lists them.
        self.val_metrics = torch.nn.ModuleDict({m.log_name: m.validation(self.model) for m in VALIDATION_METRICS})

    def forward(self, features: Tensor) -> Tensor:
        """Greedy captions (N, max_length) for (N, D) or (N, M, D) features."""
        return self.model.sample(features, self.config.max_length)

    def training_step(self, batch: CaptionBatch, batch_idx: int) -> Tensor:
        loss = self.model.loss(batch.features, batch.captions)
        # Non-finite losses are caught by callbacks.LossHistory, which syncs every few steps, not every step.
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.captions.shape[0])
        return loss

    def validation_step(self, batch: ImageBatch, batch_idx: int) -> None:
        references = batch.references  # (B, R, T)
        present = references[:, :, 0] >= 0  # (B, R): which reference slots hold a caption
        features = batch.features  # (B, D) or (B, M, D)
        repeated = features[:, None].expand(-1, references.shape[1], *features.shape[1:])[present]  # (C, [M,] D)
        captions = references[present]  # (C, T)
        loss = self.model.loss(repeated, captions)
        # A mean over captions, weighted by each batch's count, summed across processes: images
        # have 5 to 7 captions, so a plain mean of per-process means would not be a one-device run's.
        self.val_loss.update(loss, weight=captions.shape[0])
        self.log("val_loss", self.val_loss, prog_bar=True, on_step=False, on_epoch=True)

        samples = self.model.sample(batch.features, self.config.max_length)  # (B, L)
        candidates = [caption_text(row, self.idx_to_word) for row in samples.tolist()]
        targets = [
            [caption_text(ref, self.idx_to_word) for ref, ok in zip(refs, oks) if ok]
            for refs, oks in zip(references.tolist(), present.tolist())
        ]
        for metric in VALIDATION_METRICS:
            accumulator = self.val_metrics[metric.log_name]
            accumulator.update(*((samples, references) if metric.on_ids else (candidates, targets)))
            # A system that optimises the reward's metric (self-critical training) shows it every epoch.
            shown = metric.log_name == self.monitor and metric.name == REWARD_METRIC
            self.log(metric.log_name, accumulator, prog_bar=shown, on_step=False, on_epoch=True,
                     batch_size=len(candidates))  # fmt: skip

    def configure_optimizers(self):
        # fused: one kernel for all parameters instead of a loop of per-tensor ops (benchmarks/README.md).
        optimizer = torch.optim.Adam(self.parameters(), lr=self.config.lr, fused=True)
        decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.config.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}
