"""The project's CaptioningRNN rebuilt from PyTorch's own modules, for side-by-side timing.

    features (N, D) ──nn.Linear──► h0 (1, N, H)
    captions_in (N, T) ──nn.Embedding──► words (N, T, W) ──nn.RNN / nn.LSTM(h0)──► hidden (N, T, H)
    hidden ──nn.Linear──► scores (N, T, V) ──F.cross_entropy(ignore_index=NULL, sum) / N──► loss

The math is the project's (``caption_torch.models.recurrent``), but every layer is a native
kernel: on CPU, float32 ``nn.RNN``/``nn.LSTM`` run oneDNN's fused RNN; on CUDA, cuDNN.
With ``packed=True`` the captions go through ``pack_padded_sequence``, PyTorch's own way to
skip padding: the recurrence stops at each caption's last word and the vocabulary
projection scores only real positions, as the project does. (On CPU a packed nn.LSTM
leaves oneDNN's fused kernel, and at COCO sizes it is the slower of the two: benchmarks/README.md.)
Two layout differences, undone by :meth:`NativeCaptioningRNN.from_project`:

- weights are ``(out, in)`` (the project stores ``(in, out)``), so everything is transposed;
- nn.LSTM orders the gates ``[i | f | g | o]`` and has two biases; the project orders
  them ``[i | f | o | g]`` with one bias, which goes into ``bias_ih`` (``bias_hh`` = 0).

:func:`max_loss_difference` proves, in float64, that the copy gives the same loss.
Unpacked, this model runs and scores every position and lets ``ignore_index`` drop the
padding, as a plain PyTorch implementation would.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from caption_torch.functional import CELLS
from caption_torch.models.recurrent import CaptioningRNN


def _gates_to_native(weight: Tensor, cell_type: str, inverse: bool = False) -> Tensor:
    """Reorder the gate blocks along dim 0 from the project's order to the native module's (or back, ``inverse``)."""
    order = CELLS[cell_type].native_gate_order
    if inverse:
        order = tuple(sorted(range(len(order)), key=order.__getitem__))
    blocks = weight.chunk(len(order), dim=0)
    return torch.cat([blocks[k] for k in order], dim=0)


class NativeCaptioningRNN(nn.Module):
    """CaptioningRNN from nn.Embedding, nn.Linear, nn.RNN / nn.LSTM and F.cross_entropy.

    Args:
        vocab_size, input_dim, wordvec_dim, hidden_dim: V, D, W, H as in CaptioningRNN.
        cell_type: a name in ``functional.CELLS`` (``'rnn'``: nn.RNN with tanh; ``'lstm'``: nn.LSTM).
        null_id, start_id, end_id: ids of ``<NULL>``, ``<START>``, ``<END>``.
        dtype: dtype of every parameter.
        packed: run the loss on packed sequences (``pack_padded_sequence``).
    """

    def __init__(
        self,
        vocab_size: int,
        input_dim: int,
        wordvec_dim: int,
        hidden_dim: int,
        cell_type: str,
        null_id: int,
        start_id: int | None,
        end_id: int | None,
        dtype: torch.dtype = torch.float32,
        packed: bool = False,
    ) -> None:
        super().__init__()
        self.cell, self.packed = CELLS[cell_type], packed
        self.null_id, self.start_id, self.end_id = null_id, start_id, end_id
        self.embed = nn.Embedding(vocab_size, wordvec_dim, dtype=dtype)
        self.project = nn.Linear(input_dim, hidden_dim, dtype=dtype)
        # nn.RNN's default nonlinearity is tanh, the project's RNN cell.
        self.recurrent = getattr(nn, self.cell.native)(wordvec_dim, hidden_dim, batch_first=True, dtype=dtype)
        self.vocab = nn.Linear(hidden_dim, vocab_size, dtype=dtype)

    @classmethod
    def from_project(cls, model: CaptioningRNN, packed: bool = False) -> "NativeCaptioningRNN":
        """A native model on the same device holding a copy of ``model``'s weights (same loss)."""
        native = cls(
            model.vocab_size,
            model.input_dim,
            model.wordvec_dim,
            model.hidden_dim,
            model.cell_type,
            model.null_id,
            model.start_id,
            model.end_id,
            dtype=model.W_proj.dtype,
            packed=packed,
        ).to(model.W_proj.device)
        reorder = functools.partial(_gates_to_native, cell_type=model.cell_type)
        with torch.no_grad():
            native.embed.weight.copy_(model.W_embed)
            native.project.weight.copy_(model.W_proj.T)
            native.project.bias.copy_(model.b_proj)
            native.recurrent.weight_ih_l0.copy_(reorder(model.Wx.T))  # (gH, W)
            native.recurrent.weight_hh_l0.copy_(reorder(model.Wh.T))  # (gH, H)
            native.recurrent.bias_ih_l0.copy_(reorder(model.b))
            native.recurrent.bias_hh_l0.zero_()
            native.vocab.weight.copy_(model.W_vocab.T)
            native.vocab.bias.copy_(model.b_vocab)
        return native

    def forward(self, features: Tensor, captions: Tensor) -> Tensor:
        return self.loss(features, captions)

    def loss(self, features: Tensor, captions: Tensor) -> Tensor:
        """Masked cross-entropy summed over timesteps and divided by N, as ``CaptioningRNN.loss``."""
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]  # (N, T) each
        words, state = self.embed(captions_in), self.initial_state(features)
        if self.packed:
            # Each caption up to its last scored position (a <NULL> before it would still count as ignored).
            positions = torch.arange(1, captions_out.shape[1] + 1, device=captions.device)
            lengths = ((captions_out != self.null_id) * positions).amax(dim=1).clamp(min=1).cpu()
            pack = functools.partial(pack_padded_sequence, lengths=lengths, batch_first=True, enforce_sorted=False)
            hidden, _ = self.recurrent(pack(words), state)
            scores, targets = self.vocab(hidden.data), pack(captions_out).data  # (P, V), (P,): real positions only
        else:
            hidden, _ = self.recurrent(words, state)  # (N, T, H)
            scores, targets = self.vocab(hidden).flatten(0, 1), captions_out.flatten()  # (N*T, V), (N*T,)
        total = F.cross_entropy(scores, targets, ignore_index=self.null_id, reduction="sum")
        return total / features.shape[0]

    def initial_state(self, features: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """nn.RNN's h0, or nn.LSTM's (h0, c0 = 0); each (1, N, H): one layer."""
        h0 = self.project(features)[None]
        zeros = tuple(torch.zeros_like(h0) for _ in range(self.cell.state_size - 1))
        return (h0, *zeros) if zeros else h0

    @torch.no_grad()
    def sample(self, features: Tensor, max_length: int = 30) -> Tensor:
        """Greedy captions, as ``CaptioningRNN.sample``: the recurrent module stepped one word at a time."""
        state = self.initial_state(features)
        N = features.shape[0]
        captions = torch.full((N, max_length), self.null_id, dtype=torch.long, device=features.device)
        words = torch.full((N,), self.start_id, dtype=torch.long, device=features.device)
        finished = torch.zeros(N, dtype=torch.bool, device=features.device)
        for t in range(max_length):
            hidden, state = self.recurrent(self.embed(words)[:, None], state)  # (N, 1, H)
            words = self.vocab(hidden[:, 0]).argmax(dim=1)
            captions[:, t] = words.masked_fill(finished, self.null_id)
            finished |= words == self.end_id
            if bool(finished.all()):
                break
        return captions


def max_loss_difference(
    model: CaptioningRNN, features: Tensor, captions: Tensor, packed: bool = False
) -> tuple[float, float]:
    """|loss difference| and the largest |gradient difference| between ``model`` and its native copy.

    Gradients are compared parameter by parameter after mapping the native ones back
    to the project's layout (transpose, gate order, ``bias_ih + bias_hh``).
    """
    native = NativeCaptioningRNN.from_project(model, packed)
    model.zero_grad(set_to_none=True)
    project_loss = model.loss(features, captions)
    project_loss.backward()
    native_loss = native.loss(features, captions)
    native_loss.backward()

    reorder = functools.partial(_gates_to_native, cell_type=model.cell_type, inverse=True)
    recurrent = native.recurrent
    native_grads = {
        "W_embed": native.embed.weight.grad,
        "W_proj": native.project.weight.grad.T,
        "b_proj": native.project.bias.grad,
        "Wx": reorder(recurrent.weight_ih_l0.grad).T,
        "Wh": reorder(recurrent.weight_hh_l0.grad).T,
        "b": reorder(recurrent.bias_ih_l0.grad),
        "W_vocab": native.vocab.weight.grad.T,
        "b_vocab": native.vocab.bias.grad,
    }
    grad_difference = max((param.grad - native_grads[name]).abs().max().item() for name, param in model.params.items())
    return abs(project_loss.item() - native_loss.item()), grad_difference
