"""Every check of the cs231n RNN-captioning notebook, printed as the notebook prints it.

    python -m caption_torch.check

Each check cell of cs231n's RNN_Captioning notebook becomes one section
below, with the same inputs (NumPy's generator seeded with 231, as the notebook
does), the same numeric-gradient procedure (centred differences, h = 1e-5) and the
same ``rel_error``. Each line is printed next to the bound the notebook states,
and the command exits with status 1 if any value is out of bounds. Three more
sections come from the assignment's LSTM notebook (step, sequence and model loss), and the
last ones from its Transformer_Captioning notebook, each section naming the years whose
notebook prints it: attention and positional encoding as taught from 2021 to 2025 (checked in
training mode), 2025's decoder layer, and 2026's attention and positional encoding (after ``.eval()``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from caption_torch import functional as F
from caption_torch import guard
from caption_torch.models.recurrent import CaptioningRNN


@dataclass(frozen=True)
class CheckLine:
    """One printed value and the interval the notebook says it should lie in."""

    section: str
    label: str
    value: float
    low: float
    high: float

    @property
    def ok(self) -> bool:
        return self.low <= self.value <= self.high

    def format(self) -> str:
        if self.low == 0:
            bound = f"<= {self.high:.0e}"
        elif self.high - self.low < 1e-6:  # a value pinned to an expected number
            bound = f"expected {(self.low + self.high) / 2:.12g} +- {(self.high - self.low) / 2:.0e}"
        else:
            bound = f"in [{self.low:g}, {self.high:g}]"
        shown = f"{self.value:.6e}" if self.low == 0 else f"{self.value:.12g}"
        return f"{self.label + ':':<24}{shown:<22}({bound}) {'ok' if self.ok else 'OUT OF BOUNDS'}"


def rel_error(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> float:
    """The notebook's relative error: max |x - y| / max(1e-8, |x| + |y|)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


def numerical_gradient_array(f: Callable[[Tensor], Tensor], x: Tensor, grad_out: Tensor, h: float = 1e-5) -> Tensor:
    """Centred-difference gradient of ``sum(f(x) * grad_out)`` w.r.t. x (modifies x temporarily)."""
    grad = torch.zeros_like(x)
    flat_x, flat_grad = x.view(-1), grad.view(-1)
    for i in range(flat_x.numel()):
        old = flat_x[i].item()
        flat_x[i] = old + h
        plus = f(x).detach().clone()
        flat_x[i] = old - h
        minus = f(x).detach().clone()
        flat_x[i] = old
        flat_grad[i] = ((plus - minus) * grad_out).sum() / (2 * h)
    return grad


def numerical_gradient(f: Callable[[Tensor], Tensor], x: Tensor, h: float = 1e-5) -> Tensor:
    """Centred-difference gradient of a scalar function."""
    return numerical_gradient_array(f, x, torch.ones((), dtype=x.dtype), h)


def analytic_gradients(output: Tensor, inputs: list[Tensor], grad_out: Tensor | None = None) -> list[Tensor]:
    """Gradients from the hand-written backward passes."""
    grad_out = torch.ones_like(output) if grad_out is None else grad_out
    return list(torch.autograd.grad(output, inputs, grad_out))


def _as_tensors(*arrays: np.ndarray) -> list[Tensor]:
    return [torch.tensor(a, dtype=torch.float64) for a in arrays]


def _lin(low: float, high: float, *shape: int) -> np.ndarray:
    return np.linspace(low, high, num=int(np.prod(shape))).reshape(*shape)


def _error_lines(section: str, labels: list[str], numeric: list[Tensor], analytic: list[Tensor], bound: float):
    for label, num, ana in zip(labels, numeric, analytic):
        yield CheckLine(section, f"{label} error", rel_error(num, ana), 0.0, bound)


def _gradient_check(section, fn, arrays, labels, bound, rng, grad_shape=None):
    """Numeric vs hand-written gradients of ``fn`` w.r.t. every tensor in ``arrays``."""
    inputs = [t.requires_grad_() for t in _as_tensors(*arrays)]
    output = fn(*inputs)
    grad_out = torch.tensor(rng.randn(*output.shape), dtype=torch.float64)
    analytic = analytic_gradients(output, inputs, grad_out)
    numeric = []
    with torch.no_grad():
        for i, x in enumerate(inputs):
            numeric.append(numerical_gradient_array(lambda v: fn(*inputs[:i], v, *inputs[i + 1 :]), x, grad_out))
    yield from _error_lines(section, labels, numeric, analytic, bound)


# --------------------------------------------------------------------------- #
# The notebook's cells
# --------------------------------------------------------------------------- #


def check_rnn_step_forward() -> Iterator[CheckLine]:
    N, D, H = 3, 10, 4
    x, prev_h = _lin(-0.4, 0.7, N, D), _lin(-0.2, 0.5, N, H)
    Wx, Wh, b = _lin(-0.1, 0.9, D, H), _lin(-0.3, 0.7, H, H), _lin(-0.2, 0.4, H)
    next_h = F.rnn_step(*_as_tensors(x, prev_h, Wx, Wh, b))
    expected = np.asarray([
        [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
        [0.66854692, 0.79562378, 0.87755553, 0.92795967],
        [0.97934501, 0.99144213, 0.99646691, 0.99854353]])  # fmt: skip
    yield CheckLine("Vanilla RNN: step forward", "next_h error", rel_error(expected, next_h), 0.0, 1e-7)


def check_rnn_step_backward() -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    N, D, H = 4, 5, 6
    arrays = [rng.randn(N, D), rng.randn(N, H), rng.randn(D, H), rng.randn(H, H), rng.randn(H)]
    labels = ["dx", "dprev_h", "dWx", "dWh", "db"]
    yield from _gradient_check("Vanilla RNN: step backward", F.rnn_step, arrays, labels, 1e-7, rng)


def check_rnn_forward() -> Iterator[CheckLine]:
    N, T, D, H = 2, 3, 4, 5
    x, h0 = _lin(-0.1, 0.3, N, T, D), _lin(-0.3, 0.1, N, H)
    Wx, Wh, b = _lin(-0.2, 0.4, D, H), _lin(-0.4, 0.1, H, H), _lin(-0.7, 0.1, H)
    h = F.rnn(*_as_tensors(x, h0, Wx, Wh, b))
    expected = np.asarray([
        [[-0.42070749, -0.27279261, -0.11074945, 0.05740409, 0.22236251],
         [-0.39525808, -0.22554661, -0.0409454, 0.14649412, 0.32397316],
         [-0.42305111, -0.24223728, -0.04287027, 0.15997045, 0.35014525]],
        [[-0.55857474, -0.39065825, -0.19198182, 0.02378408, 0.23735671],
         [-0.27150199, -0.07088804, 0.13562939, 0.33099728, 0.50158768],
         [-0.51014825, -0.30524429, -0.06755202, 0.17806392, 0.40333043]]])  # fmt: skip
    yield CheckLine("Vanilla RNN: forward", "h error", rel_error(expected, h), 0.0, 1e-6)


def check_rnn_backward() -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    N, D, T, H = 2, 3, 10, 5
    arrays = [rng.randn(N, T, D), rng.randn(N, H), rng.randn(D, H), rng.randn(H, H), rng.randn(H)]
    labels = ["dx", "dh0", "dWx", "dWh", "db"]
    yield from _gradient_check("Vanilla RNN: backward", F.rnn, arrays, labels, 1e-5, rng)


def check_word_embedding_forward() -> Iterator[CheckLine]:
    V, D = 5, 3  # the notebook: N, T, V, D = 2, 4, 5, 3
    x = torch.tensor([[0, 3, 1, 2], [2, 1, 0, 3]])
    W = torch.tensor(_lin(0, 1, V, D))
    out = F.word_embedding(x, W)
    expected = np.asarray([
        [[0.0, 0.07142857, 0.14285714], [0.64285714, 0.71428571, 0.78571429],
         [0.21428571, 0.28571429, 0.35714286], [0.42857143, 0.5, 0.57142857]],
        [[0.42857143, 0.5, 0.57142857], [0.21428571, 0.28571429, 0.35714286],
         [0.0, 0.07142857, 0.14285714], [0.64285714, 0.71428571, 0.78571429]]])  # fmt: skip
    yield CheckLine("Word embedding: forward", "out error", rel_error(expected, out), 0.0, 1e-7)


def check_word_embedding_backward() -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    N, T, V, D = 50, 3, 5, 6
    x = torch.tensor(rng.randint(V, size=(N, T)))
    arrays = [rng.randn(V, D)]
    yield from _gradient_check("Word embedding: backward", lambda W: F.word_embedding(x, W), arrays, ["dW"], 1e-10, rng)


def check_temporal_affine() -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    N, T, D, M = 2, 3, 4, 5
    arrays = [rng.randn(N, T, D), rng.randn(D, M), rng.randn(M)]
    yield from _gradient_check("Temporal affine", F.temporal_affine, arrays, ["dx", "dw", "db"], 1e-8, rng)


def check_temporal_softmax_loss() -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    section = "Temporal softmax loss"

    def sanity_loss(N: int, T: int, V: int, p: float) -> float:
        x = torch.tensor(0.001 * rng.randn(N, T, V))
        y = torch.tensor(rng.randint(V, size=(N, T)))
        mask = torch.tensor(rng.rand(N, T) <= p)
        return F.temporal_softmax_loss(x, y, mask).item()

    # Near-uniform scores: each counted token costs log(V) = 2.3026 for V = 10.
    yield CheckLine(section, "loss (N=100, T=1)", sanity_loss(100, 1, 10, 1.0), 2.25, 2.35)
    yield CheckLine(section, "loss (N=100, T=10)", sanity_loss(100, 10, 10, 1.0), 22.5, 23.5)
    yield CheckLine(section, "loss (N=5000, p=0.1)", sanity_loss(5000, 10, 10, 0.1), 2.15, 2.45)

    N, T, V = 7, 8, 9
    x = torch.tensor(rng.randn(N, T, V), requires_grad=True)
    y = torch.tensor(rng.randint(V, size=(N, T)))
    mask = torch.tensor(rng.rand(N, T) > 0.5)
    (grad_analytic,) = analytic_gradients(F.temporal_softmax_loss(x, y, mask), [x])
    with torch.no_grad():
        grad_numeric = numerical_gradient(lambda v: F.temporal_softmax_loss(v, y, mask), x)
    yield CheckLine(section, "dx error", rel_error(grad_analytic, grad_numeric), 0.0, 1e-6)


def _fixed_value_model(cell_type: str, feature_range: tuple[float, float]) -> tuple[float, float]:
    """The notebook's forward check: every parameter filled with linspace(-1.4, 1.3)."""
    N, D, W, H, T = 10, 20, 30, 40, 13
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    model = CaptioningRNN(word_to_idx, D, W, H, cell_type=cell_type, dtype=torch.float64)
    with torch.no_grad():
        for param in model.params.values():
            param.copy_(torch.tensor(_lin(-1.4, 1.3, *param.shape)))
    features = torch.tensor(_lin(*feature_range, N, D))
    captions = torch.arange(N * T).reshape(N, T) % len(word_to_idx)
    return model.loss(features, captions).item()


def _model_loss_lines(section: str, loss: float, expected: float) -> Iterator[CheckLine]:
    yield CheckLine(section, "loss", loss, expected - 1e-9, expected + 1e-9)
    yield CheckLine(section, "difference", abs(loss - expected), 0.0, 1e-9)


def check_model_loss() -> Iterator[CheckLine]:
    loss = _fixed_value_model("rnn", (-1.5, 0.3))
    yield from _model_loss_lines("RNN for image captioning", loss, expected=9.83235591003)


def check_model_gradients(cell_type: str = "rnn") -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    N, T, D, W, H = 2, 3, 4, 5, 6
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    captions = torch.tensor(rng.randint(len(word_to_idx), size=(N, T)))
    features = torch.tensor(rng.randn(N, D))
    torch.manual_seed(231)
    model = CaptioningRNN(word_to_idx, D, W, H, cell_type=cell_type, dtype=torch.float64)
    params = model.params
    analytic = dict(zip(params, analytic_gradients(model.loss(features, captions), list(params.values()))))
    section = f"CaptioningRNN gradients ({cell_type})"
    with torch.no_grad():
        for name in sorted(params):
            numeric = numerical_gradient(lambda _: model.loss(features, captions), params[name].data)
            yield CheckLine(section, f"{name} relative error", rel_error(numeric, analytic[name]), 0.0, 1e-5)


# --------------------------------------------------------------------------- #
# The assignment's LSTM notebook
# --------------------------------------------------------------------------- #


def check_lstm_step_forward() -> Iterator[CheckLine]:
    N, D, H = 3, 4, 5
    x, prev_h, prev_c = _lin(-0.4, 1.2, N, D), _lin(-0.3, 0.7, N, H), _lin(-0.4, 0.9, N, H)
    Wx, Wh, b = _lin(-2.1, 1.3, D, 4 * H), _lin(-0.7, 2.2, H, 4 * H), _lin(0.3, 0.7, 4 * H)
    next_h, _ = F.lstm_step(*_as_tensors(x, prev_h, prev_c, Wx, Wh, b))
    expected = np.asarray([
        [0.24635157, 0.28610883, 0.32240467, 0.35525807, 0.38474904],
        [0.49223563, 0.55611431, 0.61507696, 0.66844003, 0.7159181],
        [0.56735664, 0.66310127, 0.74419266, 0.80889665, 0.858299]])  # fmt: skip
    yield CheckLine("LSTM: step forward", "next_h error", rel_error(expected, next_h), 0.0, 1e-7)


def check_lstm_step_backward() -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    N, D, H = 4, 5, 6
    arrays = [rng.randn(N, D), rng.randn(N, H), rng.randn(N, H), rng.randn(D, 4 * H), rng.randn(H, 4 * H),
              rng.randn(4 * H)]  # fmt: skip
    labels = ["dx", "dh", "dc", "dWx", "dWh", "db"]

    def next_h_and_c(*inputs: Tensor) -> Tensor:
        return torch.stack(F.lstm_step(*inputs))  # (2, N, H): one upstream gradient for both outputs

    yield from _gradient_check("LSTM: step backward", next_h_and_c, arrays, labels, 1e-6, rng)


def check_lstm_forward() -> Iterator[CheckLine]:
    N, D, H, T = 2, 5, 4, 3
    x, h0 = _lin(-0.4, 0.6, N, T, D), _lin(-0.4, 0.8, N, H)
    Wx, Wh, b = _lin(-0.2, 0.9, D, 4 * H), _lin(-0.3, 0.6, H, 4 * H), _lin(0.2, 0.7, 4 * H)
    h = F.lstm(*_as_tensors(x, h0, Wx, Wh, b))
    expected = np.asarray([
        [[0.01764008, 0.01823233, 0.01882671, 0.0194232],
         [0.11287491, 0.12146228, 0.13018446, 0.13902939],
         [0.31358768, 0.33338627, 0.35304453, 0.37250975]],
        [[0.45767879, 0.4761092, 0.4936887, 0.51041945],
         [0.6704845, 0.69350089, 0.71486014, 0.7346449],
         [0.81733511, 0.83677871, 0.85403753, 0.86935314]]])  # fmt: skip
    yield CheckLine("LSTM: forward", "h error", rel_error(expected, h), 0.0, 1e-6)


def check_lstm_backward() -> Iterator[CheckLine]:
    rng = np.random.RandomState(231)
    N, D, T, H = 2, 3, 10, 6
    arrays = [rng.randn(N, T, D), rng.randn(N, H), rng.randn(D, 4 * H), rng.randn(H, 4 * H), rng.randn(4 * H)]
    labels = ["dx", "dh0", "dWx", "dWh", "db"]
    yield from _gradient_check("LSTM: backward", F.lstm, arrays, labels, 1e-6, rng)


def check_lstm_model_loss() -> Iterator[CheckLine]:
    # The LSTM notebook's features span (-0.5, 1.7), the RNN notebook's (-1.5, 0.3).
    loss = _fixed_value_model("lstm", (-0.5, 1.7))
    yield from _model_loss_lines("LSTM for image captioning", loss, expected=9.82445935443)


# --------------------------------------------------------------------------- #
# The assignment's Transformer_Captioning notebook
# --------------------------------------------------------------------------- #
# From 2021 to 2025 its values were printed in training mode, with the dropout masks torch draws
# through Intel MKL; under mkl_dropout() every CPU draws those masks, so the values are reproduced
# anywhere. 2026's notebook runs its checks after .eval(): no masks, the same values on any CPU.


def attention_notebook_outputs(attn: torch.nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """The Transformer notebooks' three attention calls, drawing their inputs from torch's generator in order.

    Returns (1, 3, 8) outputs of self-attention, masked self-attention (``randn(3, 3) < 0.5``) and attention
    to other data (key = value).
    """
    data = torch.randn(1, 3, 8)
    self_attn_output = attn(query=data, key=data, value=data)
    mask = torch.randn(3, 3) < 0.5
    masked_self_attn_output = attn(query=data, key=data, value=data, attn_mask=mask)
    other_data = torch.randn(1, 3, 8)
    return self_attn_output, masked_self_attn_output, attn(query=data, key=other_data, value=other_data)


def check_transformer_attention() -> Iterator[CheckLine]:
    from caption_torch.models.transformer import MultiHeadAttention

    with F.mkl_dropout():
        torch.manual_seed(231)
        attn = MultiHeadAttention(8, num_heads=2)
        self_attn_output, masked_self_attn_output, attn_output = attention_notebook_outputs(attn)
    expected_self = np.asarray([[
        [-0.2494, 0.1396, 0.4323, -0.2411, -0.1547, 0.2329, -0.1936, -0.1444],
        [-0.1997, 0.1746, 0.7377, -0.3549, -0.2657, 0.2693, -0.2541, -0.2476],
        [-0.0625, 0.1503, 0.7572, -0.3974, -0.1681, 0.2168, -0.2478, -0.3038]]])  # fmt: skip
    expected_masked = np.asarray([[
        [-0.1347, 0.1934, 0.8628, -0.4903, -0.2614, 0.2798, -0.2586, -0.3019],
        [-0.1013, 0.3111, 0.5783, -0.3248, -0.3842, 0.1482, -0.3628, -0.1496],
        [-0.2071, 0.1669, 0.7097, -0.3152, -0.3136, 0.2520, -0.2774, -0.2208]]])  # fmt: skip
    expected_cross = np.asarray([[
        [-0.1980, 0.4083, 0.1968, -0.3477, 0.0321, 0.4258, -0.8972, -0.2744],
        [-0.1603, 0.4155, 0.2295, -0.3485, -0.0341, 0.3929, -0.8248, -0.2767],
        [-0.0908, 0.4113, 0.3017, -0.3539, -0.1020, 0.3784, -0.7189, -0.2912]]])  # fmt: skip
    section = "Transformer 2021-2025 (training mode): multi-head attention"
    for label, output, expected in (
        ("self_attn_output error", self_attn_output, expected_self),
        ("masked_self_attn error", masked_self_attn_output, expected_masked),
        ("attn_output error", attn_output, expected_cross),
    ):
        yield CheckLine(section, label, rel_error(expected, output.detach()), 0.0, 1e-3)


def check_positional_encoding() -> Iterator[CheckLine]:
    from caption_torch.models.transformer import PositionalEncoding

    with F.mkl_dropout():
        torch.manual_seed(231)
        pe = PositionalEncoding(6)
        output = pe(torch.randn(1, 2, 6))
    expected = np.asarray([[[-1.2340, 1.1127, 1.6978, -0.0865, -0.0000, 1.2728],
                            [0.9028, -0.4781, 0.5535, 0.8133, 1.2644, 1.7034]]])  # fmt: skip
    section = "Transformer 2021-2025 (training mode): positional encoding"
    yield CheckLine(section, "pe_output error", rel_error(expected, output), 0.0, 1e-3)


def check_transformer_decoder_layer_2025() -> Iterator[CheckLine]:
    """2025's decoder layer (GELU feed-forward), in training mode with the notebook's masks."""
    from caption_torch.models.transformer import TransformerDecoderLayer

    with F.mkl_dropout():
        torch.manual_seed(231)
        np.random.seed(231)
        layer = TransformerDecoderLayer(12, 2, 48, cs231n_version=2025)
        tgt = torch.randn(1, 4, 12)
        memory = torch.randn(1, 5, 12)
        tgt_mask = torch.randn(4, 4) < 0.5
        output = layer(tgt, memory, tgt_mask)
    expected = np.asarray([[
        [1.1464597, -0.32541496, 0.39171425, -0.39425734, 0.62471056, -1.8665842, -0.12977494, -1.6609063,
         -0.5620399, 0.45006236, 1.6086785, 0.7173523],
        [-0.6703264, 0.34731007, -0.01452054, -0.0500976, 0.9617562, -0.91788256, 0.5138556, -1.5247818,
         2.0940537, -1.0386938, 1.0333964, -0.7340692],
        [-1.1966342, 0.78882384, 0.1765188, 0.04164891, 1.9480462, -0.94358695, 0.83423877, -0.44660965,
         1.1469632, -1.6658922, -0.27915588, -0.4043607],
        [-0.96863323, 0.10736976, -0.18560877, -0.86474127, -0.12873, 0.36593518, 0.9634492, -0.9432319,
         1.4652547, 1.2200648, 0.9218512, -1.9529796]]])  # fmt: skip
    section = "Transformer 2025 (training mode): decoder layer"
    yield CheckLine(section, "output error", rel_error(expected, output.detach()), 0.0, 1e-5)


def check_transformer_attention_2026() -> Iterator[CheckLine]:
    """2026's attention checks: 2021-2025's inputs, the module in eval mode (no dropout)."""
    from caption_torch.models.transformer import MultiHeadAttention

    torch.manual_seed(231)
    attn = MultiHeadAttention(8, num_heads=2).eval()
    self_attn_output, masked_self_attn_output, attn_output = attention_notebook_outputs(attn)
    expected_self = np.asarray([[
        [-0.1030, 0.2090, 0.7481, -0.4116, -0.2772, 0.2357, -0.2740, -0.2798],
        [-0.1794, 0.1637, 0.6930, -0.3435, -0.2300, 0.2457, -0.2504, -0.2323],
        [-0.1861, 0.1567, 0.6677, -0.3078, -0.2731, 0.2302, -0.2714, -0.2082]]])  # fmt: skip
    expected_masked = np.asarray([[
        [-0.1209, 0.1806, 0.8056, -0.4654, -0.2262, 0.2552, -0.2544, -0.2812],
        [-0.2374, 0.1183, 0.7423, -0.3777, -0.1460, 0.2716, -0.2213, -0.2077],
        [-0.0851, 0.2423, 0.7941, -0.3778, -0.4924, 0.1512, -0.4241, -0.1740]]])  # fmt: skip
    expected_cross = np.asarray([[
        [-0.1965, 0.0702, 0.5227, -0.1388, -0.3530, 0.2163, -0.2643, -0.1902],
        [-0.3592, -0.0899, 0.5836, 0.0029, -0.3643, 0.2667, -0.1973, -0.1698],
        [-0.3795, 0.0433, 0.5634, -0.0749, -0.4379, 0.2714, -0.2207, -0.1980]]])  # fmt: skip
    section = "Transformer 2026 (eval): multi-head attention"
    for label, output, expected in (
        ("self_attn_output error", self_attn_output, expected_self),
        ("masked_self_attn error", masked_self_attn_output, expected_masked),
        # The notebook's own expected values sit 6.2e-3 from a correct layer, hence its bound.
        ("attn_output error", attn_output, expected_cross),
    ):
        yield CheckLine(section, label, rel_error(expected, output.detach()), 0.0, 7e-3)


def check_positional_encoding_2026() -> Iterator[CheckLine]:
    from caption_torch.models.transformer import PositionalEncoding

    torch.manual_seed(231)
    pe = PositionalEncoding(6).eval()
    output = pe(torch.randn(1, 2, 6))
    expected = np.asarray([[[-1.1106, 1.0014, 1.5280, -0.0778, -0.6964, 1.1455],
                            [0.8125, -0.4303, 0.4981, 0.7320, 1.1380, 1.5331]]])  # fmt: skip
    yield CheckLine("Transformer 2026 (eval): positional encoding", "pe_output error", rel_error(expected, output),
                    0.0, 1e-3)  # fmt: skip


ALL_CHECKS: tuple[Callable[[], Iterator[CheckLine]], ...] = (
    check_rnn_step_forward,
    check_rnn_step_backward,
    check_rnn_forward,
    check_rnn_backward,
    check_word_embedding_forward,
    check_word_embedding_backward,
    check_temporal_affine,
    check_temporal_softmax_loss,
    check_model_loss,
    check_model_gradients,
    check_lstm_step_forward,
    check_lstm_step_backward,
    check_lstm_forward,
    check_lstm_backward,
    check_lstm_model_loss,
    lambda: check_model_gradients("lstm"),
    check_transformer_attention,
    check_positional_encoding,
    check_transformer_decoder_layer_2025,
    check_transformer_attention_2026,
    check_positional_encoding_2026,
)


def run_all() -> list[CheckLine]:
    """Run every check and return its lines."""
    return [line for check in ALL_CHECKS for line in check()]


@guard.entry_point("check")
def main() -> int:
    lines, section = run_all(), None
    for line in lines:
        if line.section != section:
            section = line.section
            print(f"\n{section}")
        print("  " + line.format())
    failed = [line for line in lines if not line.ok]
    print(f"\n{len(lines) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
