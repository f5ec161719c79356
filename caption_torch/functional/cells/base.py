"""What a recurrent cell is: its weight layout and its math for one timestep, forward and backward.

The time loops (``steps.py`` for one step, ``sequences.py`` for whole sequences, packed or
padded) own everything that is the same for every cell: the order of the steps, the rows of
the sequences still running, the products with ``Wh`` and every weight gradient. A cell owns
only what happens between those products, through the four methods of :class:`Cell`.

Per timestep, for the n sequences still running:

    a      (n, gH)  input side:  x @ Wx + b (projected before the loop, one GEMM for all steps)
    hidden (n, gH)  hidden side: h @ Wh, h the previous hidden state (the loop's product)
    state  (h, ...) each (n, H): forward_step(hidden, before, after, *rows) writes ``after``

and backward, given the gradient into the new state:

    grad_a      (n, gH)  w.r.t. the input side: what dx, dWx, db and a table's rows get
    grad_hidden (n, gH)  w.r.t. the hidden side: the loop turns it into grad_hidden @ Wh.T
                         (into h) and sums before-h.T @ grad_hidden over the steps (dWh)
    direct      (n, H)   the gradient into h that does not pass through h @ Wh (None if none)
    carries              the gradients into the state's other tensors (an LSTM's c)

A cell whose pre-activation is a plain sum ``a + hidden`` (the vanilla RNN, the LSTM) has
grad_hidden = grad_a, and may return the same tensor for both. A GRU's candidate
``tanh(a_n + r * hidden_n)`` has not: there grad_hidden_n = grad_a_n * r.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from caption_torch.functional.sequences import recurrence, recurrence_lookup
from caption_torch.functional.steps import cell_step

# A recurrent state: (h,) for the vanilla RNN, (h, c) for the LSTM; h first, each (N, H).
State = tuple[Tensor, ...]


class Cell(ABC):
    """One recurrent cell. Subclass it, set the class attributes and write the four methods below.

    Attributes:
        name: the cell's name on the command line and in checkpoints.
        gates: blocks of H columns in Wx, Wh and b (the pre-activation width is gates * H).
        state_names: the state's tensors, h first (the others start at zero in a sequence).
        native: the ``torch.nn`` module with the same cell, for the benchmarks' side-by-side
            runs, or None.
        native_gate_order: the cell's gate blocks in the order ``native`` stores them.

    The loops hand a cell packed tensors: P rows, one per (step, running sequence) pair,
    time-major, and each step gets its own n rows of them (views made before the loop).
    """

    name: str
    gates: int
    state_names: tuple[str, ...] = ("h",)
    native: str | None = None
    native_gate_order: tuple[int, ...] = ()

    @property
    def state_size(self) -> int:
        """Tensors in the recurrent state (h first)."""
        return len(self.state_names)

    # ------------------------------------------------------------------ #
    # The math: one timestep, forward and backward
    # ------------------------------------------------------------------ #

    @abstractmethod
    def forward_rows(self, a: Tensor, a_is_scratch: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Before the forward loop: what the steps read and write, and what backward keeps.

        Args:
            a: (P, gH) input-side pre-activations of every step.
            a_is_scratch: whether ``a`` is the loop's own tensor, which the cell may overwrite
                (e.g. with its gate activations); otherwise it is the caller's, left as it is.

        Returns:
            ``(rows, saved)``: rows, packed (P, ...) tensors (or column views of them) whose
            step rows :meth:`forward_step` gets, in this order; saved, the tensors
            :meth:`backward_rows` gets back.
        """

    @abstractmethod
    def forward_step(self, hidden: Tensor, before: State, after: State, *rows: Tensor) -> None:
        """One timestep for the n sequences still running.

        Args:
            hidden: (n, gH) hidden-side pre-activations, the previous h @ Wh (the cell's to overwrite).
            before: the state before the step, each (n, H).
            after: where to write the state after it, each (n, H).
            rows: this step's n rows of each tensor of :meth:`forward_rows`' rows.
        """

    @abstractmethod
    def backward_rows(self, saved: tuple[Tensor, ...], before: State, after: State) -> tuple[Tensor, Tensor, tuple]:
        """Before the backward loop: the gradient buffers, and what the steps read.

        Args:
            saved: the tensors :meth:`forward_rows` saved.
            before, after: the state before and after every step, each (P, H).

        Returns:
            ``(grad_a, grad_hidden, rows)``: (P, gH) buffers that :meth:`backward_step` fills
            (they may be one tensor, see the module's docstring), and packed tensors whose
            step rows it gets.
        """

    @abstractmethod
    def backward_step(self, grad_h: Tensor, carries: State, *rows: Tensor) -> tuple[Tensor | None, State]:
        """One timestep backward: fill this step's rows of grad_a and grad_hidden.

        Args:
            grad_h: (n, H) total gradient into the step's new h.
            carries: the gradients into the new state's other tensors, each (n, H), zero for
                a state nothing read; the cell's to overwrite.
            rows: this step's n rows of each tensor of :meth:`backward_rows`' rows.

        Returns:
            ``(direct, carries)``: the gradient (n, H) into the previous h that does not pass
            through h @ Wh (None when there is none), and the gradients into the previous
            state's other tensors, each (n, H).
        """

    # ------------------------------------------------------------------ #
    # The cell on a step and on whole sequences (the loops of steps.py and sequences.py)
    # ------------------------------------------------------------------ #

    def step(self, x_projected: Tensor, state: State, Wh: Tensor) -> State:
        """One timestep: ``(x_projected (N, gH), state, Wh (H, gH)) -> state``, each state tensor (N, H)."""
        return cell_step(self, x_projected, state, Wh)

    def projected(self, x_projected: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Whole sequences of projected inputs ``x @ Wx + b``: ``(x_projected (N, T, gH), h0 (N, H), Wh,
        lengths) -> (N, T, H)`` hidden states; the other state tensors start at zero."""
        return recurrence(self, x_projected, h0, Wh, lengths)

    def sequence(self, index: Tensor, table: Tensor, h0: Tensor, Wh: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Whole sequences whose inputs are rows of a table of projections (the training path):
        ``(index (N, T), table (U, gH), h0 (N, H), Wh, lengths) -> (N, T, H)``."""
        return recurrence_lookup(self, index, table, h0, Wh, lengths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, gates={self.gates}, state={self.state_names})"
