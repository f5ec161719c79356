"""The math of the captioning model: one ``torch.autograd.Function`` per layer.

Every Function computes its forward pass with plain tensor ops and its backward
pass by hand (no autograd inside ``backward``); ``tests/test_functional.py``
proves each one with ``torch.autograd.gradcheck``. Argument order and weight
layouts follow cs231n's ``rnn_layers.py``: weight matrices are ``(in, out)``, so a
layer computes ``x @ W + b``.

Shapes use these letters throughout:

    N  batch size                 T  timesteps
    D  input width                H  hidden width
    V  vocabulary size            K  number of unmasked (scored) tokens
    P  steps that run (packed)    U  rows of an input table (distinct words)

The sequence Functions (``rnn``, ``lstm``) run the whole sequence in one Function
so that backward can do backprop-through-time itself: the input projections of
all timesteps are one GEMM before the time loop (or, for ``*_lookup``, one gather
of rows of a table projected beforehand), and the weight and input gradients are
one GEMM each after it (a per-row sum for a table); only the recurrent ``h @ Wh``
stays inside the Python loop over T. Each Function has one signature: the step and
sequence Functions take projected inputs (``x @ Wx + b``), and cs231n's ``rnn_step``,
``rnn``, ``lstm_step`` and ``lstm`` compose them with ``temporal_affine``.

Every lowercase wrapper validates its inputs (clear ``ValueError`` naming the
argument) and then calls ``Function.apply``. The modules, in dependency order:

    _common.py    input checks, autocast casting, the matrix products (oneDNN on CPU)
    checks.py     check_positive_integer, check_token_ids: the argument checks layers and decoders share
    words.py      word_embedding; Affine, the one affine Function (temporal_affine, linear); select_rows and
                  its adjoint; weighted_softmax_loss, the one softmax loss Function, with
                  temporal_softmax_loss and vocab_softmax_loss as its wrappers
    steps.py      one timestep of any cell (generation's Function)
    sequences.py  whole sequences of any cell: packed time loops with BPTT in backward
    cells/        CELLS: each recurrent cell, one file each (rnn.py, lstm.py), with cs231n's
                  rnn_step, rnn, lstm_step, lstm (+ *_projected, *_lookup); how to add one
    policy.py     policy_gradient_loss: vocab_softmax_loss weighted per caption or word (self-critical training)

Every Function is written the same way: ``forward`` takes the inputs only, ``setup_context``
saves what ``backward`` needs (a Function whose backward needs intermediates of its forward
returns them as extra, non-differentiable outputs, and its wrapper returns the first output),
and ``backward`` computes only the gradients that ``ctx.needs_input_grad`` asks for.
"""

from caption_torch.functional.cells import CELLS, Cell, State
from caption_torch.functional.cells.lstm import lstm, lstm_lookup, lstm_projected, lstm_step, lstm_step_projected
from caption_torch.functional.cells.rnn import rnn, rnn_lookup, rnn_projected, rnn_step, rnn_step_projected
from caption_torch.functional.checks import check_positive_integer, check_token_ids
from caption_torch.functional.policy import policy_gradient_loss
from caption_torch.functional.words import (
    select_rows,
    temporal_affine,
    temporal_softmax_loss,
    vocab_softmax_loss,
    weighted_softmax_loss,
    word_embedding,
)

__all__ = [
    "CELLS",
    "Cell",
    "State",
    "rnn_step",
    "rnn_step_projected",
    "rnn",
    "rnn_projected",
    "rnn_lookup",
    "lstm_step",
    "lstm_step_projected",
    "lstm",
    "lstm_projected",
    "lstm_lookup",
    "check_positive_integer",
    "check_token_ids",
    "word_embedding",
    "temporal_affine",
    "select_rows",
    "weighted_softmax_loss",
    "temporal_softmax_loss",
    "vocab_softmax_loss",
    "policy_gradient_loss",
]

# The Transformer's layers, weights in nn.Linear's (out, in) layout:
#   dropout.py    dropout, and mkl_dropout() to draw its masks as torch's CPU dropout did through Intel MKL
#   gelu.py       the GELU feed-forward block of cs231n 2025-2026 (exact GELU), reached through feed_forward
#   layers.py     linear, memory_mean, layer_norm, feed_forward (ReLU or GELU), sinusoidal_positions/add_positions,
#                 transformer_softmax_loss
#   attention.py  multi_head_attention: projections, masked softmax, dropout, weighted sum, output map in one;
#                 attention_heads and cached_attention for generation with cached keys and values
#   packing.py    the decoder on packed captions: only the positions before each caption's last scored word,
#                 attending to M memory vectors per caption
from caption_torch.functional.attention import attention_heads, cached_attention, multi_head_attention  # noqa: E402
from caption_torch.functional.dropout import dropout, mkl_dropout  # noqa: E402
from caption_torch.functional.layers import (  # noqa: E402
    add_positions,
    feed_forward,
    layer_norm,
    linear,
    memory_mean,
    sinusoidal_positions,
    transformer_softmax_loss,
)
from caption_torch.functional.packing import (  # noqa: E402
    CausalPacking,
    causal_packing,
    pack_rows,
    packed_attention,
    packed_dropout,
)

__all__ += [
    "mkl_dropout",
    "dropout",
    "linear",
    "memory_mean",
    "layer_norm",
    "feed_forward",
    "multi_head_attention",
    "attention_heads",
    "cached_attention",
    "sinusoidal_positions",
    "add_positions",
    "transformer_softmax_loss",
    "CausalPacking",
    "causal_packing",
    "pack_rows",
    "packed_dropout",
    "packed_attention",
]
