"""A cell is one object: a GRU written here, as functional/cells' recipe says, runs through every loop.

The GRU's candidate multiplies the hidden side by the reset gate, ``tanh(a_n + r * (h @ Wh)_n)``,
so its gradients w.r.t. the input side and the hidden side differ: the loops must take both
from the cell. It is checked with float64 gradcheck, against plain autograd on the same
equations and against ``torch.nn.GRUCell``, through the step Function (generation), the
padded and packed sequence Functions and the whole CaptioningRNN.
"""

import pytest
import torch
from torch.autograd import gradcheck

from caption_torch import CaptioningRNN
from caption_torch.functional import CELLS, Cell

# --------------------------------------------------------------------------- #
# The new cell: one class and one table row (the fixture below)
# --------------------------------------------------------------------------- #


class GRUCell(Cell):
    """Gate blocks [r | z | n], as torch.nn.GRU, with a = x Wx + b and s = h Wh:

    r, z = sigmoid(a_r + s_r), sigmoid(a_z + s_z);  n = tanh(a_n + r * s_n);  h' = (1 - z) n + z h
    """

    name = "gru"
    gates = 3

    def forward_rows(self, a, a_is_scratch):
        H = a.shape[1] // 3
        gates = torch.empty_like(a)  # activations [r, z, n]
        hidden_n = a.new_empty(a.shape[0], H)  # s_n, which r's gradient needs
        return (a, gates, hidden_n), (gates, hidden_n)

    def forward_step(self, hidden, before, after, a, gates, hidden_n):
        (h,), (h_next,) = before, after
        H = h.shape[1]
        torch.sigmoid(a[:, : 2 * H] + hidden[:, : 2 * H], out=gates[:, : 2 * H])
        r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
        hidden_n.copy_(hidden[:, 2 * H :])
        torch.tanh(a[:, 2 * H :] + r * hidden_n, out=n)
        torch.add(n, z * (h - n), out=h_next)

    def backward_rows(self, saved, before, after):
        gates, hidden_n = saved
        grad_a, grad_hidden = torch.empty_like(gates), torch.empty_like(gates)
        return grad_a, grad_hidden, (gates, hidden_n, before[0], grad_a, grad_hidden)

    def backward_step(self, grad_h, carries, gates, hidden_n, h, grad_a, grad_hidden):
        r, z, n = gates.split(h.shape[1], dim=1)
        grad_an = grad_h * (1 - z) * (1 - n * n)
        grad_ar = grad_an * hidden_n * r * (1 - r)
        grad_az = grad_h * (h - n) * z * (1 - z)
        grad_a.copy_(torch.cat([grad_ar, grad_az, grad_an], dim=1))
        grad_hidden.copy_(torch.cat([grad_ar, grad_az, grad_an * r], dim=1))  # s_n enters times r
        return grad_h * z, carries  # h' = ... + z h: into h without Wh


@pytest.fixture
def gru(monkeypatch):
    cell = GRUCell()
    monkeypatch.setitem(CELLS, "gru", cell)
    return cell


# --------------------------------------------------------------------------- #
# The same equations with plain differentiable ops
# --------------------------------------------------------------------------- #


def ref_gru_step(a, h, Wh):
    s = h @ Wh
    a_r, a_z, a_n = a.chunk(3, dim=1)
    s_r, s_z, s_n = s.chunk(3, dim=1)
    r, z = torch.sigmoid(a_r + s_r), torch.sigmoid(a_z + s_z)
    n = torch.tanh(a_n + r * s_n)
    return (1 - z) * n + z * h


def ref_gru(a, h0, Wh, lengths=None):
    """(N, T, 3H) input sides -> (N, T, H), zero after each sequence's length."""
    h, outputs = h0, []
    for t in range(a.shape[1]):
        h = ref_gru_step(a[:, t], h, Wh)
        outputs.append(h)
    out = torch.stack(outputs, dim=1)
    if lengths is None:
        return out
    return out * (torch.arange(a.shape[1])[None, :] < lengths[:, None])[..., None]


def _inputs(N=4, T=5, H=3, U=4, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    return dict(
        x_projected=randn(N, T, 3 * H),
        table=randn(U, 3 * H),
        index=torch.randint(U, (N, T), generator=gen),
        h0=randn(N, H),
        Wh=randn(H, 3 * H, scale=H**-0.5),
        lengths=torch.tensor([T, 3, 1, 0])[:N],
    )


def _forms(cell, inputs):
    """Every loop a model runs, as (name, our function, reference, differentiable inputs)."""
    i = inputs
    index, lengths = i["index"], i["lengths"]
    return [
        ("step", lambda a, h, Wh: cell.step(a, (h,), Wh)[0], ref_gru_step, [i["x_projected"][:, 0], i["h0"], i["Wh"]]),
        ("padded", lambda a, h0, Wh: cell.projected(a, h0, Wh), ref_gru, [i["x_projected"], i["h0"], i["Wh"]]),
        (
            "padded, lengths",
            lambda a, h0, Wh: cell.projected(a, h0, Wh, lengths),
            lambda a, h0, Wh: ref_gru(a, h0, Wh, lengths),
            [i["x_projected"], i["h0"], i["Wh"]],
        ),
        (
            "packed lookup",
            lambda table, h0, Wh: cell.sequence(index, table, h0, Wh, lengths),
            lambda table, h0, Wh: ref_gru(table[index], h0, Wh, lengths),
            [i["table"], i["h0"], i["Wh"]],
        ),
    ]


FORMS = ["step", "padded", "padded, lengths", "packed lookup"]


@pytest.mark.parametrize("form", FORMS)
def test_gru_gradcheck_float64(gru, form):
    _, fn, _, inputs = next(f for f in _forms(gru, _inputs()) if f[0] == form)
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_gru_matches_plain_autograd(gru, form):
    _, fn, ref, inputs = next(f for f in _forms(gru, _inputs(N=4, T=6, H=5, seed=1)) if f[0] == form)
    ours, expected = fn(*inputs), ref(*inputs)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gru_step_is_torch_nn_grucell(gru):
    """nn.GRUCell's math on the same weights (its b_hh, inside r * (h W_hn + b_hn), left at zero)."""
    N, D, H = 3, 4, 5
    native = torch.nn.GRUCell(D, H, dtype=torch.float64)
    with torch.no_grad():
        native.bias_hh.zero_()
    x, h = torch.randn(N, D, dtype=torch.float64), torch.randn(N, H, dtype=torch.float64)
    Wx, Wh, b = native.weight_ih.T, native.weight_hh.T, native.bias_ih  # (in, out) layout, blocks [r | z | n]
    (ours,) = gru.step(x @ Wx + b, (h,), Wh)
    torch.testing.assert_close(ours, native(x, h), rtol=1e-12, atol=1e-12)


def test_captioning_rnn_trains_and_generates_with_the_registered_gru(gru):
    """The model takes the new cell by name: its loss and every parameter's gradient are plain autograd's."""
    torch.manual_seed(0)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{k}": k for k in range(3, 12)}}
    model = CaptioningRNN(vocab, input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type="gru", dtype=torch.float64)
    assert model.Wh.shape == (4, 12)
    features = torch.randn(5, 6, dtype=torch.float64)
    captions = torch.randint(1, 12, (5, 7))
    captions[1, 5:], captions[3, 2:] = 0, 0  # <NULL> padding: shorter captions

    loss = model.loss(features, captions)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    p = model.params
    captions_in, captions_out = captions[:, :-1], captions[:, 1:]
    h0 = features @ p["W_proj"] + p["b_proj"]
    hidden = ref_gru(p["W_embed"][captions_in] @ p["Wx"] + p["b"], h0, p["Wh"])
    scores = hidden @ p["W_vocab"] + p["b_vocab"]
    nll = torch.nn.functional.cross_entropy(scores.transpose(1, 2), captions_out, reduction="none")
    expected = (nll * (captions_out != 0)).sum() / captions.shape[0]
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for (name, _), got, want in zip(model.named_parameters(), grads, torch.autograd.grad(expected, list(p.values()))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)

    # Generation feeds one word at a time through the same cell's step.
    state, h = model.initial_state(features), h0
    for words in (torch.full((5,), 1), captions[:, 1], captions[:, 2]):
        _, state = model.step(words, state)
        h = ref_gru_step(p["W_embed"][words] @ p["Wx"] + p["b"], h, p["Wh"])
        torch.testing.assert_close(state[0], h, rtol=1e-12, atol=1e-12)
    assert model.sample(features, 4).shape == (5, 4)


def test_step_names_the_state_a_cell_needs():
    h = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"the lstm state must be a tuple of 2 tensors \(h, c\)"):
        CELLS["lstm"].step(torch.randn(2, 12), (h,), torch.randn(3, 12))
    with pytest.raises(ValueError, match="prev_c has shape \\(2, 4\\) but prev_h has \\(2, 3\\)"):
        CELLS["lstm"].step(torch.randn(2, 12), (h, torch.randn(2, 4)), torch.randn(3, 12))
