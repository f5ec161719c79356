"""Every autograd Function: float64 gradcheck, agreement with plain autograd, float32, bad inputs."""

import pytest
import torch
from torch.autograd import gradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import caption_torch.functional as F
from caption_torch.functional.words import PlaceRows

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- #
# Reference implementations: the same math written with plain differentiable ops
# --------------------------------------------------------------------------- #


def ref_rnn_step(x, prev_h, Wx, Wh, b):
    return torch.tanh(x @ Wx + prev_h @ Wh + b)


def ref_rnn(x, h0, Wx, Wh, b):
    h, outputs = h0, []
    for t in range(x.shape[1]):
        h = ref_rnn_step(x[:, t], h, Wx, Wh, b)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def ref_lstm_step(x, prev_h, prev_c, Wx, Wh, b):
    i, f, o, g = (x @ Wx + prev_h @ Wh + b).chunk(4, dim=1)
    next_c = torch.sigmoid(f) * prev_c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(next_c), next_c


def ref_lstm(x, h0, Wx, Wh, b):
    h, c, outputs = h0, torch.zeros_like(h0), []
    for t in range(x.shape[1]):
        h, c = ref_lstm_step(x[:, t], h, c, Wx, Wh, b)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def ref_temporal_softmax_loss(x, y, mask):
    log_probs = torch.log_softmax(x, dim=2)
    nll = -log_probs.gather(2, y[..., None]).squeeze(2)
    return (nll * mask).sum() / x.shape[0]


def ref_vocab_softmax_loss(hidden, W, b, y, mask):
    return ref_temporal_softmax_loss(hidden @ W + b, y, mask)


def ref_weighted_softmax_loss(scores, targets, weights, total):
    nll = -torch.log_softmax(scores, dim=1).gather(1, targets[:, None])[:, 0]
    return (nll * weights).sum() / total


# --------------------------------------------------------------------------- #
# Cases: (custom function, reference, factory of differentiable inputs, fixed extra inputs)
# --------------------------------------------------------------------------- #


def make_case(name, N, T, D, H, V, dtype, device):
    """Inputs for one Function at the given sizes; the first list is differentiable."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    ids = torch.randint(V, (N, T), generator=gen).to(device)
    mask = (torch.rand(N, T, generator=gen) > 0.3).to(device)
    wscale = 1 / D**0.5
    hscale = 1 / H**0.5
    if name == "rnn_step":
        return (
            F.rnn_step,
            ref_rnn_step,
            [randn(N, D), randn(N, H), randn(D, H, scale=wscale), randn(H, H, scale=hscale), randn(H)],
            [],
        )
    if name == "rnn":
        return (
            F.rnn,
            ref_rnn,
            [randn(N, T, D), randn(N, H), randn(D, H, scale=wscale), randn(H, H, scale=hscale), randn(H)],
            [],
        )
    if name == "lstm_step":
        return (
            F.lstm_step,
            ref_lstm_step,
            [
                randn(N, D),
                randn(N, H),
                randn(N, H),
                randn(D, 4 * H, scale=wscale),
                randn(H, 4 * H, scale=hscale),
                randn(4 * H),
            ],
            [],
        )
    if name == "lstm":
        return (
            F.lstm,
            ref_lstm,
            [randn(N, T, D), randn(N, H), randn(D, 4 * H, scale=wscale), randn(H, 4 * H, scale=hscale), randn(4 * H)],
            [],
        )
    # Sorted step counts with a finished-early and an empty sequence: padding must be skipped exactly.
    lengths = torch.linspace(T, 0, N).round().long().to(device)
    if name.startswith(("rnn_", "lstm_")):  # the sequence and step variants
        cell, variant = name.split("_", 1)
        gates = 4 if cell == "lstm" else 1
        kept = (torch.arange(T, device=device)[None, :] < lengths[:, None])[..., None]  # (N, T, 1)
        # Projected inputs are x @ I + 0: the references run with an identity Wx and a zero b.
        eye = torch.eye(gates * H, dtype=dtype, device=device)
        zero = torch.zeros(gates * H, dtype=dtype, device=device)
        ref = ref_lstm if cell == "lstm" else ref_rnn
        if variant == "lengths":
            fn = F.lstm if cell == "lstm" else F.rnn
            return (
                (lambda *args: fn(*args, lengths)),
                (lambda *args: ref(*args) * kept),
                [
                    randn(N, T, D),
                    randn(N, H),
                    randn(D, gates * H, scale=wscale),
                    randn(H, gates * H, scale=hscale),
                    randn(gates * H),
                ],
                [],
            )
        if variant == "step_projected":

            def identity_step_ref(x_projected, *rest):
                if cell == "lstm":
                    prev_h, prev_c, Wh = rest
                    return ref_lstm_step(x_projected, prev_h, prev_c, eye, Wh, zero)
                prev_h, Wh = rest
                return ref_rnn_step(x_projected, prev_h, eye, Wh, zero)

            states = [randn(N, H), randn(N, H)] if cell == "lstm" else [randn(N, H)]
            fn = F.lstm_step_projected if cell == "lstm" else F.rnn_step_projected
            return fn, identity_step_ref, [randn(N, gates * H), *states, randn(H, gates * H, scale=hscale)], []
        if variant == "projected":
            fn = F.lstm_projected if cell == "lstm" else F.rnn_projected
            inputs = [randn(N, T, gates * H), randn(N, H), randn(H, gates * H, scale=hscale)]
            return fn, (lambda x_projected, h0, Wh: ref(x_projected, h0, eye, Wh, zero)), inputs, []
        if variant == "lookup":
            fn = F.lstm_lookup if cell == "lstm" else F.rnn_lookup
            rows = torch.randint(3, (N, T), generator=gen).to(device)  # 3 table rows for N*T steps: each read often
            return (
                (lambda table, h0, Wh: fn(rows, table, h0, Wh, lengths)),
                (lambda table, h0, Wh: ref(table[rows], h0, eye, Wh, zero) * kept),  # gathered rows, padding zeroed
                [randn(3, gates * H), randn(N, H), randn(H, gates * H, scale=hscale)],
                [],
            )
    if name == "word_embedding":
        return (lambda W, x: F.word_embedding(x, W)), (lambda W, x: W[x]), [randn(V, D)], [ids]
    if name == "temporal_affine":
        return F.temporal_affine, (lambda x, w, b: x @ w + b), [randn(N, T, D), randn(D, V, scale=wscale), randn(V)], []
    if name == "temporal_softmax_loss":
        return F.temporal_softmax_loss, ref_temporal_softmax_loss, [randn(N, T, V)], [ids, mask]
    if name == "vocab_softmax_loss":
        return (
            F.vocab_softmax_loss,
            ref_vocab_softmax_loss,
            [randn(N, T, H), randn(H, V, scale=hscale), randn(V)],
            [ids, mask],
        )
    if name == "weighted_softmax_loss":  # one weight per row, of either sign (0: the row does not count)
        weights = randn(N * T) * mask.reshape(N * T)
        return F.weighted_softmax_loss, ref_weighted_softmax_loss, [randn(N * T, V)], [ids.reshape(N * T), weights, 3.0]
    if name == "select_rows":
        return (lambda x: F.select_rows(x, mask)), (lambda x: x[mask]), [randn(N, T, H)], []
    if name == "place_rows":  # the adjoint of select_rows: the packed rows back at their positions, zeros elsewhere
        return (
            (lambda rows: PlaceRows.apply(rows, mask)),
            (lambda rows: torch.zeros(N, T, H, dtype=rows.dtype).masked_scatter(mask[..., None], rows)),
            [randn(int(mask.sum()), H)],
            [],
        )
    raise KeyError(name)


FUNCTIONS = [
    "rnn_step", "rnn_step_projected", "rnn", "rnn_lengths", "rnn_projected", "rnn_lookup",
    "lstm_step", "lstm_step_projected", "lstm", "lstm_lengths", "lstm_projected", "lstm_lookup",
    "word_embedding", "temporal_affine", "temporal_softmax_loss", "vocab_softmax_loss", "weighted_softmax_loss",
    "select_rows", "place_rows",
]  # fmt: skip


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("lengths", [[3, 2, 2, 0], [0, 0, 0, 0], [1, 1, 1, 1]], ids=["short", "empty", "one-step"])
def test_sequences_shorter_than_T(cell, lengths):
    """When no sequence needs the last steps, those steps are skipped and get no gradient, exactly."""
    N, T, D, H = 4, 5, 3, 2
    gates = 4 if cell == "lstm" else 1
    fn, ref = (F.lstm, ref_lstm) if cell == "lstm" else (F.rnn, ref_rnn)
    gen = torch.Generator().manual_seed(7)
    shapes = [(N, T, D), (N, H), (D, gates * H), (H, gates * H), (gates * H,)]
    inputs = [torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True) for shape in shapes]
    steps = torch.tensor(lengths)
    kept = (torch.arange(T)[None, :] < steps[:, None])[..., None]  # (N, T, 1)

    ours = fn(*inputs, steps)
    expected = ref(*inputs) * kept
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, inputs, upstream)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    for name, got, want in zip(["x", "h0", "Wx", "Wh", "b"], ours_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
    assert gradcheck(lambda *args: fn(*args, steps), inputs)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_zero_timesteps(cell, with_lengths):
    """T = 0: an empty (N, 0, H) output, and zero gradients for every input (h0 included)."""
    N, D, H = 3, 4, 2
    gates = 4 if cell == "lstm" else 1
    fn = F.lstm if cell == "lstm" else F.rnn
    shapes = [(N, 0, D), (N, H), (D, gates * H), (H, gates * H), (gates * H,)]
    inputs = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in shapes]
    lengths = torch.zeros(N, dtype=torch.long) if with_lengths else None
    out = fn(*inputs, lengths)
    assert out.shape == (N, 0, H)
    grads = torch.autograd.grad(out.sum(), inputs)
    for name, grad in zip(["x", "h0", "Wx", "Wh", "b"], grads):
        assert torch.equal(grad, torch.zeros_like(grad)), name


def _callers_inputs(layout, N, T, C, gen):
    """(N, T, C) float64 inputs whose time-major packing is free: the Function's packed rows are this memory."""
    if layout == "one-sequence":
        return torch.randn(1, T, C, generator=gen, dtype=torch.float64)
    return torch.randn(T, N, C, generator=gen, dtype=torch.float64).transpose(0, 1)  # a time-major view


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("layout", ["one-sequence", "time-major"])
@pytest.mark.parametrize("full_lengths", [False, True], ids=["no-lengths", "full-lengths"])
def test_projected_recurrence_leaves_the_callers_tensors_unchanged(cell, layout, full_lengths):
    """The LSTM activates its gates in place: never in the caller's x_projected, even where packing is a view.

    The upstream gradient is packed the same way and must survive backward too.
    """
    T, H = 5, 3
    gates = 4 if cell == "lstm" else 1
    fn, ref = (F.lstm_projected, ref_lstm) if cell == "lstm" else (F.rnn_projected, ref_rnn)
    gen = torch.Generator().manual_seed(11)
    x_projected = _callers_inputs(layout, 4, T, gates * H, gen).requires_grad_()
    N = x_projected.shape[0]
    h0 = torch.randn(N, H, generator=gen, dtype=torch.float64, requires_grad=True)
    Wh = torch.randn(H, gates * H, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = _callers_inputs(layout, 4, T, H, gen)
    callers = [x_projected, h0, Wh, upstream]
    before = [t.detach().clone() for t in callers]
    lengths = torch.full((N,), T) if full_lengths else None

    out = fn(x_projected, h0, Wh, lengths)
    grads = torch.autograd.grad(out, [x_projected, h0, Wh], upstream)
    for name, tensor, original in zip(["x_projected", "h0", "Wh", "upstream gradient"], callers, before):
        assert torch.equal(tensor, original), f"{name} was changed in place"
    # ... and the results are those of the untouched inputs.
    eye, zero = torch.eye(gates * H, dtype=torch.float64), torch.zeros(gates * H, dtype=torch.float64)
    inputs = [t.detach().clone().requires_grad_() for t in before[:3]]
    expected = ref(inputs[0], inputs[1], eye, inputs[2], zero)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, torch.autograd.grad(expected, inputs, before[3])):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["rnn_step", "rnn_step_projected", "lstm_step", "lstm_step_projected"])
def test_steps_leave_the_callers_tensors_unchanged(name):
    """Every step builds its pre-activations in a new tensor: inputs and upstream gradients stay as given."""
    fn, _, inputs, _ = make_case(name, N=3, T=1, D=4, H=5, V=6, dtype=torch.float64, device="cpu")
    inputs = [t.requires_grad_() for t in inputs]
    outputs = _outputs(fn(*inputs))
    gen = torch.Generator().manual_seed(2)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outputs]
    before = [t.detach().clone() for t in inputs + upstream]
    torch.autograd.grad(outputs, inputs, upstream)
    for position, (tensor, original) in enumerate(zip(inputs + upstream, before)):
        assert torch.equal(tensor, original), f"argument {position} was changed in place"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradcheck_float64(name):
    fn, _, inputs, extra = make_case(name, N=3, T=4, D=5, H=4, V=6, dtype=torch.float64, device="cpu")
    inputs = [t.requires_grad_() for t in inputs]
    assert gradcheck(lambda *args: fn(*args, *extra), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_plain_autograd(name, dtype, device):
    """Same forward values and gradients as autograd through the same ops."""
    fn, ref, inputs, extra = make_case(name, N=4, T=5, D=6, H=7, V=9, dtype=dtype, device=device)
    ours_in = [t.clone().requires_grad_() for t in inputs]
    ref_in = [t.clone().requires_grad_() for t in inputs]
    ours, expected = _outputs(fn(*ours_in, *extra)), _outputs(ref(*ref_in, *extra))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in expected]
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, **tol)
    grads = torch.autograd.grad(ours, ours_in, upstream)
    ref_grads = torch.autograd.grad(expected, ref_in, upstream)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, **tol)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_float32_realistic_sizes(name):
    """At COCO sizes in float32: finite, and within float32 noise of a float64 run."""
    sizes = dict(N=64, T=16, D=256, H=512, V=1004)  # 64 x 512: the cells take oneDNN's tanh (_tanh)
    fn, _, inputs32, extra = make_case(name, dtype=torch.float32, device="cpu", **sizes)
    _, _, inputs64, _ = make_case(name, dtype=torch.float64, device="cpu", **sizes)
    ins32 = [t.requires_grad_() for t in inputs32]
    ins64 = [t.requires_grad_() for t in inputs64]
    out32, out64 = _outputs(fn(*ins32, *extra)), _outputs(fn(*ins64, *extra))
    loss32 = sum(o.double().sum() for o in out32)
    loss64 = sum(o.sum() for o in out64)
    grads32 = torch.autograd.grad(loss32, ins32)
    grads64 = torch.autograd.grad(loss64, ins64)
    for o32, o64 in zip(out32, out64):
        assert torch.isfinite(o32).all()
        torch.testing.assert_close(o32.double(), o64, rtol=1e-4, atol=1e-4)
    for g32, g64 in zip(grads32, grads64):
        assert torch.isfinite(g32).all()
        scale = g64.abs().max().clamp_min(1e-12)
        assert ((g32.double() - g64).abs().max() / scale) < 1e-4


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_needs_input_grad_skips_unneeded_products(cell, monkeypatch):
    """With only Wh requiring grad, backward computes no dx, dWx or dh0 product (and returns None for them)."""
    import caption_torch.functional.sequences as sequences
    import caption_torch.functional.words as words

    _, _, inputs, _ = make_case(cell, N=2, T=3, D=4, H=5, V=6, dtype=torch.float64, device="cpu")
    fn = F.lstm if cell == "lstm" else F.rnn
    products = []
    real_mm = sequences._mm
    # rnn/lstm compose the input projection (words.temporal_affine) with the recurrence: count both.
    for module in (sequences, words):
        monkeypatch.setattr(module, "_mm", lambda a, b: products.append((a.shape, b.shape)) or real_mm(a, b))

    def backward_products(requiring):
        args = [t.detach().clone().requires_grad_(i in requiring) for i, t in enumerate(inputs)]
        out = fn(*args)
        products.clear()
        grads = torch.autograd.grad(out.sum(), [args[i] for i in requiring])
        return len(products), grads

    all_count, _ = backward_products({0, 1, 2, 3, 4})
    wh_count, (grad_Wh,) = backward_products({3})
    # The time loop's products are needed either way; dx, dWx and dh0 are the 3 extra ones.
    assert all_count - wh_count == 3 and grad_Wh.shape == inputs[3].shape


def test_word_embedding_accumulates_repeated_words():
    W = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[1, 1, 1], [1, 3, 0]])
    F.word_embedding(x, W).sum().backward()
    torch.testing.assert_close(W.grad[:, 0], torch.tensor([1.0, 4.0, 0.0, 1.0], dtype=torch.float64))


def test_softmax_loss_is_stable_for_huge_scores():
    x = torch.tensor([[[1e4, -1e4, 0.0]], [[5e3, 5e3, -1e4]]], dtype=torch.float32, requires_grad=True)
    y = torch.tensor([[0], [1]])
    loss = F.temporal_softmax_loss(x, y, torch.ones(2, 1, dtype=torch.bool))
    loss.backward()
    # Row 0 is certain and right (loss 0); row 1 splits evenly (loss log 2); divided by N = 2.
    torch.testing.assert_close(loss, torch.tensor(0.5 * torch.log(torch.tensor(2.0)).item()))
    assert torch.isfinite(x.grad).all()


def test_softmax_loss_divides_by_batch_not_tokens():
    x = torch.zeros(4, 3, 5, dtype=torch.float64)
    y = torch.zeros(4, 3, dtype=torch.long)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[0, 0] = True  # one counted token out of 12
    loss = F.temporal_softmax_loss(x, y, mask)
    torch.testing.assert_close(loss, torch.log(torch.tensor(5.0, dtype=torch.float64)) / 4)


def test_fused_loss_with_everything_masked_is_zero_with_zero_gradient():
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(2, 3, dtype=torch.long)
    loss = F.vocab_softmax_loss(hidden, W, b, y, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert hidden.grad.abs().sum() == 0 and W.grad.abs().sum() == 0


# --------------------------------------------------------------------------- #
# Bad inputs: a ValueError naming what is wrong
# --------------------------------------------------------------------------- #


def _rnn_inputs():
    return [torch.randn(2, 3, 4), torch.randn(2, 5), torch.randn(4, 5), torch.randn(5, 5), torch.randn(5)]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.__setitem__(0, torch.randn(2, 3, 6)), "input width of x"),
        (lambda a: a.__setitem__(1, torch.randn(3, 5)), "batch size of x"),
        (lambda a: a.__setitem__(3, torch.randn(5, 4)), "Wh"),
        (lambda a: a.__setitem__(4, torch.randn(6)), "b has size 6"),
        (lambda a: a.__setitem__(0, torch.randn(2, 4)), "x must have 3 dimensions"),
        (lambda a: a.__setitem__(2, torch.randn(4, 5, dtype=torch.float64)), "share one dtype"),
        (lambda a: a.__setitem__(0, torch.ones(2, 3, 4, dtype=torch.long)), "floating-point"),
    ],
)
def test_rnn_bad_inputs(mutate, message):
    args = _rnn_inputs()
    mutate(args)
    with pytest.raises(ValueError, match=message):
        F.rnn(*args)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize(
    "change, message",
    [  # change: the hidden width times the gates -> the arguments replaced
        (lambda gH: dict(index=torch.tensor([[0, 3], [1, 2]])), "row number 3, outside the table \\[0, 3\\)"),
        (lambda gH: dict(index=torch.tensor([[0.0, 1.0], [1.0, 2.0]])), "tensor of row numbers, got torch.float32"),
        (lambda gH: dict(index=torch.tensor([0, 1])), "index must have 2 dimensions"),
        (lambda gH: dict(h0=torch.randn(3, 2)), "h0 has size 3 in dimension 0 but the batch size of index is 2"),
        (lambda gH: dict(table=torch.randn(3, gH + 1)), "table has size \\d+ in dimension 1 but . x the hidden width"),
        (lambda gH: dict(table=torch.randn(3)), "table must have 2 dimensions"),
        (lambda gH: dict(table=[[0.0]]), "table must be a torch.Tensor"),
        (lambda gH: dict(Wh=torch.randn(2, gH + 1)), "Wh has size \\d+ in dimension 1"),
        (lambda gH: dict(h0=torch.randn(2, 2, dtype=torch.float64)), "share one dtype"),
        (lambda gH: dict(lengths=torch.tensor([1, 2])), "non-increasing"),
    ],
)
def test_lookup_bad_inputs(cell, change, message):
    gH = 4 * 2 if cell == "lstm" else 2  # hidden width 2
    args = dict(index=torch.tensor([[0, 1], [2, 2]]), table=torch.randn(3, gH), h0=torch.randn(2, 2))
    args["Wh"] = torch.randn(2, gH)
    fn = F.lstm_lookup if cell == "lstm" else F.rnn_lookup
    with pytest.raises(ValueError, match=message):
        fn(**{**args, **change(gH)})


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA only: the CPU's bf16 index_add_ sums in float32 itself, so on CPU this passes without the guard "
    "(test_lookup_bf16_gradient_of_a_much_read_row_with_atomic_adds checks it there)",
)
def test_lookup_half_precision_gradient_of_a_much_read_row():
    """A row read by 4,096 steps gets its bf16 gradient summed in float32: bf16 additions would stop at 256."""
    N, T, H, device = 256, 16, 4, "cuda"
    index = torch.zeros(N, T, dtype=torch.long, device=device)  # every step reads row 0, as every caption's <START>
    table = torch.zeros(2, H, dtype=torch.bfloat16, device=device, requires_grad=True)
    Wh = torch.zeros(H, H, dtype=torch.bfloat16, device=device)  # no recurrence: d out / d table row 0 is tanh'(0) = 1
    h0 = torch.zeros(N, H, dtype=torch.bfloat16, device=device)
    F.rnn_lookup(index, table, h0, Wh).sum().backward()
    assert table.grad.dtype == torch.bfloat16
    assert table.grad[0].tolist() == [4096.0] * H and table.grad[1].tolist() == [0.0] * H


class _AtomicHalfAdds(TorchDispatchMode):
    """index_add in bf16/fp16 as CUDA runs it: one atomic addition per source row, each rounded to the dtype.

    The CPU kernel accumulates half-precision sums in float32 on its own; under this mode
    the CPU rounds every addition as a GPU does, so a sum left in bf16 loses what it loses there.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        in_place = func is torch.ops.aten.index_add_.default
        if (in_place or func is torch.ops.aten.index_add.default) and args[0].dtype in (torch.bfloat16, torch.float16):
            target, dim, index, source = args[:4]
            assert not kwargs and len(args) == 4, "alpha is not emulated"
            total = target if in_place else target.clone()
            for row, addend in zip(index.tolist(), source.unbind(dim)):
                total.select(dim, row).add_(addend)  # rounded to the dtype after every addition
            return total
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_lookup_bf16_gradient_of_a_much_read_row_with_atomic_adds(cell):
    """Row 0 is read by 1,792 steps (as <START> is by every caption), row 1 by 256: in bf16 with
    GPU-style rounded additions, their gradients stay within a few bf16 steps of a float64 run.
    Summed in bf16, row 0's would stall once the total dwarfs each addend (60-70 % low here)."""
    N, T, H = 256, 8, 4
    gates = 4 if cell == "lstm" else 1
    fn = F.lstm_lookup if cell == "lstm" else F.rnn_lookup
    gen = torch.Generator().manual_seed(0)

    def bf16_values(*shape, scale=1.0):  # float64 tensors holding bf16 numbers: both runs start equal
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).bfloat16().double()

    index = torch.zeros(N, T, dtype=torch.long)
    index[:, -1] = 1
    table, h0, Wh = bf16_values(2, gates * H), bf16_values(N, H), bf16_values(H, gates * H, scale=0.1)
    upstream = torch.rand(N, T, H, generator=gen, dtype=torch.float64).bfloat16().double()
    table64, table16 = table.clone().requires_grad_(), table.bfloat16().requires_grad_()
    (expected,) = torch.autograd.grad(fn(index, table64, h0, Wh), table64, upstream)
    with _AtomicHalfAdds():
        out = fn(index, table16, h0.bfloat16(), Wh.bfloat16())
        (got,) = torch.autograd.grad(out, table16, upstream.bfloat16())
    assert got.dtype == torch.bfloat16
    for row in range(2):
        error = (got[row].double() - expected[row]).abs().max() / expected[row].abs().max()
        assert error < 0.02, (row, error.item())  # 0.02 ~ 5 bf16 steps (2^-8) of the row's largest gradient


def test_lstm_rejects_rnn_sized_weights():
    x, h0, Wx, Wh, b = _rnn_inputs()
    with pytest.raises(ValueError, match="4 x the hidden width"):
        F.lstm(x, h0, Wx, Wh, b)


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.tensor([[0, 7]]), "token id 7, outside the vocabulary"),
        (torch.tensor([[-1, 0]]), "token id -1"),
        (torch.tensor([[0.0, 1.0]]), "int64 \\(or int32\\) tensor of token ids, got torch.float32"),
        (torch.tensor([[0, 1]], dtype=torch.uint8), "got torch.uint8"),  # no index dtype for the lookups
        (torch.tensor([0, 1]), "2 dimensions"),
    ],
)
def test_word_embedding_bad_ids(ids, message):
    with pytest.raises(ValueError, match=message):
        F.word_embedding(ids, torch.randn(5, 3))


def test_softmax_loss_bad_targets_and_mask():
    x = torch.randn(2, 3, 4)
    targets = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="only 0 and 1"):  # fused and unfused would disagree on fractions
        F.temporal_softmax_loss(x, targets, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="N = 0 sequences"):
        F.temporal_softmax_loss(x[:0], targets[:0], torch.ones(0, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        F.temporal_softmax_loss(x, torch.full((2, 3), 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="y has shape"):
        F.temporal_softmax_loss(x, torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be"):
        F.temporal_softmax_loss(x, torch.zeros(2, 3, dtype=torch.long), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="b_vocab has size 6 .* the output width of W_vocab is 5"):
        F.vocab_softmax_loss(
            torch.randn(2, 3, 4),
            torch.randn(4, 5),
            torch.randn(6),
            torch.zeros(2, 3, dtype=torch.long),
            torch.ones(2, 3, dtype=torch.bool),
        )


@pytest.mark.parametrize("rows", [25, 64, 1000])  # below, at and above the oneDNN threshold
def test_tanh_helper_matches_torch_tanh_in_every_form(rows):
    from caption_torch.functional._common import _tanh

    gates = torch.randn(rows, 2048, generator=torch.Generator().manual_seed(rows)) * 3
    block = gates[:, 1536:]  # a strided (rows, 512) view, as the g gate
    expected = torch.tanh(block.double())
    new = _tanh(block)
    into = torch.empty(rows, 512)
    returned = _tanh(block, out=into)
    in_place = block.clone()
    _tanh(in_place, out=in_place)
    whole = gates.clone()
    _tanh(whole[:, 1536:], out=whole[:, 1536:])  # in place on the strided view
    assert returned is into
    assert torch.equal(whole[:, :1536], gates[:, :1536])  # the other gates are untouched
    for result in (new, into, in_place, whole[:, 1536:]):
        assert result.dtype == torch.float32 and result.shape == (rows, 512)
        assert (result.double() - expected).abs().max() < 2.5e-7  # a few float32 ulps of values up to 1
    x64 = block.double()  # float64 always takes ATen's tanh
    assert torch.equal(_tanh(x64), torch.tanh(x64))


@pytest.mark.parametrize("make_hidden", [
    lambda h: h.expand(3, 4, 5),  # stride 0 over time: one state read at every step
    lambda h: h.expand(3, 4, 5).transpose(0, 1).contiguous().transpose(0, 1),  # time-major, dense
    lambda h: h.expand(3, 4, 5)[:, ::2],  # a gap between the kept steps
])  # fmt: skip
def test_vocab_softmax_loss_gradient_for_any_hidden_layout(make_hidden):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(3, 1, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    W, b = torch.randn(5, 7, dtype=torch.float64, generator=generator), torch.zeros(7, dtype=torch.float64)
    hidden = make_hidden(h)
    y = torch.randint(0, 7, hidden.shape[:2], generator=generator)
    mask = torch.rand(hidden.shape[:2], generator=generator) < 0.7
    fused = torch.autograd.grad(F.vocab_softmax_loss(hidden, W, b, y, mask), h)[0]
    composed = torch.autograd.grad(F.temporal_softmax_loss(F.temporal_affine(hidden, W, b), y, mask), h)[0]
    torch.testing.assert_close(fused, composed, rtol=1e-12, atol=1e-12)
