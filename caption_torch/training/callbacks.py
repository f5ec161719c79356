"""Training callbacks: cs231n's progress lines and the loss history (stopping on a non-finite loss),
a clean stop on SIGTERM/SIGINT, and the resumable settings (learning rate, decay, epochs)."""

from __future__ import annotations

import math
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from caption_torch.training.checkpointing import LastCheckpoint


class LossHistory(L.Callback):
    """Keeps every training loss and prints ``(Iteration i / n) loss: x`` like cs231n's solver.

    Losses stay on the device and are copied to the host every ``print_every`` steps
    (one sync, not one per step); a NaN or inf among them stops training with an
    error naming the first bad step.

    Self-critical steps also return their mean reward and baseline (host floats already):
    those are kept in ``rewards`` and printed beside the loss.

    Args:
        print_every: print every this many iterations (and the last one); 0 prints nothing.
    """

    def __init__(self, print_every: int = 10) -> None:
        self.print_every = print_every
        self.losses: list[float] = []
        self.rewards: list[float] = []
        self._baseline: float | None = None
        self._pending: list[Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._pending.append(outputs["loss"].detach())
        if "reward" in outputs:
            self.rewards.append(float(outputs["reward"]))
            self._baseline = float(outputs["baseline"])
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        last = step >= total
        # cs231n prints iterations 1, 11, 21, ...; we also print the final one.
        if self.print_every and ((step - 1) % self.print_every == 0 or last):
            self._flush(trainer)
            if trainer.is_global_zero:
                message = f"(Iteration {step} / {total}) loss: {self.losses[-1]:f}"
                if self._baseline is not None:
                    message += f", reward: {self.rewards[-1]:.4f}, baseline: {self._baseline:.4f}"
                bar = trainer.progress_bar_callback
                if bar is not None and bar.is_enabled:
                    bar.print(message)  # keeps the progress bar intact
                else:
                    print(message)
        elif len(self._pending) >= max(self.print_every, 1):
            self._flush(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._flush(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        # Every save checks the losses not yet checked (every rank, before the write): a NaN stops the run
        # naming its first step, and the file on disk stays the last good state.
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
        return {"losses": self.losses + self._pending_values(), "rewards": self.rewards}

    def load_state_dict(self, state_dict: dict) -> None:
        self.losses = list(state_dict.get("losses", []))
        self.rewards = list(state_dict.get("rewards", []))


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """Training ended early on a signal.

    Args:
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        step: the global step reached (None: training had not started).
        checkpoint: the last.ckpt holding the newest saved state (None: nothing saved by this run).
        saved_step: the global step that checkpoint holds.
    """

    def __init__(self, signal_name: str, step: int | None, checkpoint: Path | None, saved_step: int | None) -> None:
        self.signal_name, self.step, self.checkpoint, self.saved_step = signal_name, step, checkpoint, saved_step
        super().__init__(self.describe())

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + int(getattr(signal, self.signal_name))

    def describe(self) -> str:
        when = "before training began" if self.step is None else f"at step {self.step}"
        if self.checkpoint is None:
            return f"stopped by {self.signal_name} {when}; no checkpoint was saved by this run, so start it again"
        saved = "saved" if self.saved_step == self.step else f"the newest save is step {self.saved_step} in"
        resume = f"to continue, run the same command with --resume {self.checkpoint}"
        return f"stopped by {self.signal_name} {when}; {saved} {self.checkpoint}; {resume}"


class StopOnSignal(L.Callback):
    """SIGTERM or SIGINT ends training at the next step on every process, with last.ckpt saved there.

    Cluster schedulers, ``timeout`` and ``docker stop`` send SIGTERM to every process of a
    run, or to the launching one (rank 0) alone; Ctrl-C sends SIGINT. The handler only
    records the signal; at step ends the ranks agree (one all-reduce, every
    ``check_every`` steps when there are several) whether any of them got one, so all
    save together and leave together instead of one waiting in a collective for a peer
    that is gone. A signal during validation stops there, keeping the newest last.ckpt;
    a second signal, or one outside training, stops at once.

    Args:
        last: the callback that owns last.ckpt.
        check_every: with several processes, agree about stopping every this many steps.
    """

    def __init__(self, last: LastCheckpoint, check_every: int = 10) -> None:
        self.last = last
        self.check_every = check_every
        self.received: str | None = None
        self._training = False
        self._step: int | None = None
        self._previous_handlers: dict = {}

    def install(self) -> None:
        """Handle SIGTERM and SIGINT from now on (call before training; undone by :meth:`uninstall`)."""
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in STOP_SIGNALS:
            self._previous_handlers.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = signal.Signals(signum).name
        if not (self._training and first):
            raise self.stopped()

    def stopped(self, step: int | None = None) -> TrainingStopped:
        """The stop to raise (or report) at ``step``; by default the last step training reached."""
        step = self._step if step is None else step
        saved = self.last.saved_step
        return TrainingStopped(self.received, step, self.last.path if saved is not None else None, saved)

    def _agreed(self, trainer: L.Trainer, count: int) -> bool:
        if trainer.world_size > 1 and count % self.check_every:
            return False
        return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.install()  # again: Lightning put its own SIGTERM handler in place for fit; its teardown restores ours
        self._training, self._step = True, trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._step = trainer.global_step
        if self._agreed(trainer, trainer.global_step):
            if self.last.saved_step != trainer.global_step:
                self.last.save(trainer)
            self.received = self.received or "SIGTERM"  # another rank's signal
            raise self.stopped(trainer.global_step)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int, *args) -> None:
        # Mid-validation states are not resumable: stop, keeping the newest saved one.
        if self._training and self._agreed(trainer, batch_idx + 1):
            self.received = self.received or "SIGTERM"
            raise self.stopped(trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        # After LastCheckpoint's save (it comes first among the callbacks): every rank is here, so agree now.
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self.received = self.received or "SIGTERM"
            raise self.stopped(trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._training = False


class ResumableSettings(L.Callback):
    """The flags a resumed run may change (learning rate, its decay, epochs): recorded, and applied on resume.

    Every checkpoint records them; resuming with other values rewrites the restored
    optimizer and schedule as if the run had used the new ones from the start
    (``lr * lr_decay ** epochs_done``) and says so in one line. Model-shape flags are
    checked elsewhere: they cannot change.

    Args:
        lr, lr_decay, epochs: this run's values of --lr, --lr-decay and --epochs.
    """

    def __init__(self, lr: float, lr_decay: float, epochs: int) -> None:
        self.lr, self.lr_decay, self.epochs = lr, lr_decay, epochs
        self._restored: dict | None = None

    def state_dict(self) -> dict:
        return {"lr": self.lr, "lr_decay": self.lr_decay, "epochs": self.epochs}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        stored = checkpoint.get("callbacks", {}).get(self.state_key)
        if stored is None:  # a checkpoint written before the settings were recorded
            hparams = checkpoint.get("hyper_parameters", {})
            stored = {name: hparams.get(name) for name in ("lr", "lr_decay")} | {"epochs": None}
        self._restored = stored

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self._restored is None:
            return
        changed = {name: (value, getattr(self, name)) for name, value in self._restored.items()
                   if value is not None and value != getattr(self, name)}  # fmt: skip
        if not changed:
            return
        rate = ""
        # Only a new lr or decay rewrites the schedule: recomputing an unchanged one could differ in the last bit.
        for config in trainer.lr_scheduler_configs if {"lr", "lr_decay"} & changed.keys() else []:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR):
                raise TypeError(f"ResumableSettings rewrites an ExponentialLR schedule, not {type(scheduler).__name__}")
            epochs_done = scheduler.last_epoch  # one decay per completed epoch
            lr_now = self.lr * self.lr_decay**epochs_done
            scheduler.gamma = self.lr_decay
            scheduler.base_lrs = [self.lr] * len(scheduler.base_lrs)
            for group in scheduler.optimizer.param_groups:
                group["initial_lr"], group["lr"] = self.lr, lr_now
            scheduler._last_lr = [lr_now] * len(scheduler.base_lrs)
            rate = f"; learning rate now {lr_now:.3g} after {epochs_done} epochs"
        if trainer.is_global_zero:
            flags = ", ".join(f"--{name.replace('_', '-')} {new} (was {old})" for name, (old, new) in changed.items())
            print(f"resuming with {flags}{rate}", file=sys.stderr)
