"""Training callbacks: cs231n's progress lines, the loss history, and a stop on a non-finite loss."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor


class LossHistory(L.Callback):
    """Keeps every training loss and prints ``(Iteration i / n) loss: x`` like cs231n's solver.

    Losses stay on the device and are copied to the host every ``print_every`` steps
    (one sync, not one per step); a NaN or inf among them stops training with an
    error naming the first bad step.

    Args:
        print_every: print every this many iterations (and the last one); 0 prints nothing.
    """

    def __init__(self, print_every: int = 10) -> None:
        self.print_every = print_every
        self.losses: list[float] = []
        self._pending: list[Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._pending.append(outputs["loss"].detach())
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        last = step >= total
        # cs231n prints iterations 1, 11, 21, ...; we also print the final one.
        if self.print_every and ((step - 1) % self.print_every == 0 or last):
            self._flush(trainer)
            if trainer.is_global_zero:
                message = f"(Iteration {step} / {total}) loss: {self.losses[-1]:f}"
                bar = trainer.progress_bar_callback
                if bar is not None and bar.is_enabled:
                    bar.print(message)  # keeps the progress bar intact
                else:
                    print(message)
        elif len(self._pending) >= max(self.print_every, 1):
            self._flush(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._flush(trainer)

    def _pending_values(self) -> list[float]:
        """The losses logged since the last flush, as floats (one host sync for all of them)."""
        return torch.stack(self._pending).float().cpu().tolist() if self._pending else []

    def _flush(self, trainer: L.Trainer) -> None:
        if not self._pending:
            return
        values = self._pending_values()
        first_step = trainer.global_step - len(values) + 1
        self._pending.clear()
        bad = next((offset for offset, value in enumerate(values) if not math.isfinite(value)), None)
        # Every rank flushes at the same steps; deciding together means no rank is left waiting
        # in the next all-reduce for one that stopped.
        if not trainer.strategy.reduce_boolean_decision(bad is None, all=True):
            where = (
                f"became {values[bad]} at step {first_step + bad}"
                if bad is not None
                else f"became non-finite on another process between steps {first_step} and {trainer.global_step}"
            )
            raise FloatingPointError(
                f"training loss {where}; lower the learning rate (--lr) or check the features for NaN/inf"
            )
        self.losses.extend(values)

    def state_dict(self) -> dict:
        # A checkpoint taken between flushes (--checkpoint-every) must not drop the pending losses.
        return {"losses": self.losses + self._pending_values()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.losses = list(state_dict.get("losses", []))
