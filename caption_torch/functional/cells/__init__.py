"""The recurrent cells, one object each: what the decoders, checks and benchmarks look up by name.

A cell (:class:`Cell`, ``base.py``) is its weight layout and its math for one timestep,
forward and backward; the time loops around it (one step in ``steps.py``; whole sequences,
packed or padded, in ``sequences.py``) are the same for every cell, and so are the products
with ``Wh`` and every weight gradient.

Adding a cell, a GRU say, takes one new file and one row in :data:`CELLS`:

1. ``cells/gru.py``: a subclass of :class:`Cell` with its ``name``, ``gates`` (blocks of H
   columns in Wx, Wh and b: 3 for a GRU's z, r, n), ``state_names`` (``("h",)``) and its
   four methods: ``forward_rows`` and ``forward_step`` (the new state from the input side
   ``a = x @ Wx + b`` and the hidden side ``h @ Wh``, which a GRU combines as
   ``tanh(a_n + r * (h @ Wh)_n)``), ``backward_rows`` and ``backward_step`` (the gradient
   w.r.t. the input side, w.r.t. the hidden side, and into the previous h directly).
2. ``"gru": GRUCell()`` in :data:`CELLS` below.

``CaptioningRNN(cell_type="gru")`` then trains (the packed sequence Function), generates
(the step Function) and checkpoints with no other change; ``tests/test_cells.py`` defines a
GRU this way and checks it against autograd and ``torch.nn.GRUCell``. To offer it on the
command line too, give it a decoder row in ``models/registry.py``'s ``DECODERS``.
"""

from caption_torch.functional.cells.base import Cell, State
from caption_torch.functional.cells.lstm import LSTM, LSTMCell
from caption_torch.functional.cells.rnn import RNN, RNNCell

CELLS: dict[str, Cell] = {
    "rnn": RNN,
    "lstm": LSTM,
}

__all__ = ["CELLS", "Cell", "State", "RNN", "RNNCell", "LSTM", "LSTMCell"]
