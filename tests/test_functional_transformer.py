"""The Transformer's Functions: dropout masks (torch's and Intel MKL's), gradcheck, plain autograd, bad inputs."""

import pytest
import torch

import caption_torch.functional as F
from caption_torch.functional.dropout import dropout_noise

# --------------------------------------------------------------------------- #
# Dropout masks
# --------------------------------------------------------------------------- #


def mt19937_outputs(seed: int, count: int) -> list[int]:
    """The first outputs of the 32-bit Mersenne Twister seeded as torch.manual_seed seeds it (init_genrand)."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        state.append((1812433253 * (state[-1] ^ (state[-1] >> 30)) + i) & 0xFFFFFFFF)
    outputs, index = [], 624
    for _ in range(count):
        if index == 624:
            for i in range(624):
                y = (state[i] & 0x80000000) | (state[(i + 1) % 624] & 0x7FFFFFFF)
                state[i] = state[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            index = 0
        y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        outputs.append(y ^ (y >> 18))
    return outputs


def mkl_keep_reference(seed32: int, count: int, keep: float) -> list[bool]:
    """MKL's MCG31m1 Bernoulli draws, one element at a time."""
    modulus = 2**31 - 1
    x, kept = seed32 % modulus or 1, []
    for _ in range(count):
        kept.append(x / modulus < keep)
        x = 1132489760 * x % modulus
    return kept


@pytest.mark.parametrize("seed, shape, p", [(7, (40,), 0.3), (231, (3, 5, 7), 0.1), (0, (2, 1000), 0.5)])
def test_mkl_masks_follow_the_mcg31_stream_of_one_generator_output(seed, shape, p):
    torch.manual_seed(seed)
    x = torch.ones(shape, dtype=torch.float64)
    with F.mkl_dropout():
        out = F.dropout(x, p)
    numel = x.numel()
    first, second = mt19937_outputs(seed, 2)
    expected = torch.tensor(mkl_keep_reference(first, numel, 1 - p), dtype=torch.float64).view(shape) / (1 - p)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    # Exactly one 32-bit output was consumed: the next float32 uniform is made of the second (its low 24 bits).
    assert torch.rand(()).item() == (second & 0xFFFFFF) / 2**24


def test_mkl_masks_across_the_generators_refill():
    """The 624th output is followed by a refill of the twister's state: draws across it stay right."""
    torch.manual_seed(5)
    torch.rand(622)  # 622 outputs used: the next draws are the 623rd, 624th and 625th
    outputs = mt19937_outputs(5, 625)
    with F.mkl_dropout():
        masks = [F.dropout(torch.ones(64), 0.5) > 0 for _ in range(3)]
    for mask, output in zip(masks, outputs[622:]):
        assert mask.tolist() == mkl_keep_reference(output, 64, 0.5)


def default_keep_reference(seed: int, count: int, keep: float) -> list[bool]:
    """Element k reads one 32-bit generator output as a signed number (outputs 2i and 2i + 1 make one 64-bit
    draw, low half first) and is kept below ``keep * 2^32 - 2^31``."""
    outputs = mt19937_outputs(seed, count + count % 2)
    signed = [u - 2**32 if u >= 2**31 else u for u in outputs]
    return [signed[k ^ 1] < round(keep * 2**32) - 2**31 for k in range(count)]


@pytest.mark.parametrize("seed, shape, p", [(3, (6, 50), 0.25), (231, (3, 5, 7), 0.1), (0, (999,), 0.5)])
def test_default_masks_compare_one_generator_output_per_element(seed, shape, p):
    x = torch.randn(shape)
    torch.manual_seed(seed)
    out = F.dropout(x, p)
    count = x.numel()
    kept = torch.tensor(default_keep_reference(seed, count, 1 - p)).view(shape)
    scale = torch.tensor(1.0).div_(1 - p)  # torch's own kept value: the mask divided by 1 - p in x's dtype
    assert torch.equal(out, torch.where(kept, x * scale, 0.0))
    # ceil(count / 2) 64-bit draws were consumed: the next float32 uniform is the output after them.
    assert torch.rand(()).item() == (mt19937_outputs(seed, count + count % 2 + 1)[-1] & 0xFFFFFF) / 2**24


def test_default_masks_keep_one_minus_p_at_even_and_odd_elements():
    """Both 32-bit halves of every draw are uniform: a 31-bit half would keep too few (or too many)."""
    torch.manual_seed(0)
    kept = F.dropout(torch.ones(2_000_000), 0.3) > 0
    for share in (kept.double().mean(), kept[0::2].double().mean(), kept[1::2].double().mean()):
        assert abs(share.item() - 0.7) < 5 * (0.7 * 0.3 / 1e6) ** 0.5


@pytest.mark.parametrize("p, kept", [(1e-12, 1.0), (2.0**-33 * 0.9, 1.0), (1 - 1e-12, 0.0)])
def test_default_masks_at_the_ends_of_the_probability_range(p, kept):
    """1 - p rounds to 1 (or 0) at 32 bits: every element kept (or dropped), none wrapped into the other."""
    out = F.dropout(torch.ones(1000, dtype=torch.float64), p)
    assert torch.equal(out > 0, torch.full((1000,), kept > 0))


def test_mkl_dropout_nests_and_restores():
    from caption_torch.functional.dropout import uses_mkl_masks

    assert not uses_mkl_masks()
    with F.mkl_dropout():
        with F.mkl_dropout():
            assert uses_mkl_masks()
        assert uses_mkl_masks()
    assert not uses_mkl_masks()


@pytest.mark.parametrize("p, training", [(0.0, True), (0.5, False)])
def test_dropout_that_draws_nothing_returns_its_input(p, training):
    x = torch.randn(4, 5)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    assert F.dropout(x, p, training) is x
    assert torch.equal(torch.get_rng_state(), before)


def test_dropout_of_everything_is_zero_with_zero_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    out = F.dropout(x, 1.0)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(3, 4)) and torch.equal(x.grad, torch.zeros(3, 4))


def test_dropout_gradient_is_the_mask():
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(2)
    out = F.dropout(x, 0.4)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    torch.testing.assert_close(grad, (out / x).detach())


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True])
def test_dropout_bad_probability(p):
    with pytest.raises(ValueError, match="p must be a probability in \\[0, 1\\]"):
        F.dropout(torch.ones(3), p)


# --------------------------------------------------------------------------- #
# Every Function against the same math in plain autograd
# --------------------------------------------------------------------------- #


def seeded_noise(shape, p, dtype, seed):
    """The noise the wrappers draw after torch.manual_seed(seed) (the default masks)."""
    torch.manual_seed(seed)
    return dropout_noise(torch.empty(shape, dtype=dtype), p)


def reseeded(fn, seed):
    """fn with torch.manual_seed(seed) before every call: its dropout masks are the same each time."""

    def call(*args):
        torch.manual_seed(seed)
        return fn(*args)

    return call


def ref_attention(query, key, value, Wq, bq, Wk, bk, Wv, bv, Wp, bp, heads, mask, noise):
    N, S, E = query.shape
    T = key.shape[1]
    Q = (query @ Wq.T + bq).view(N, S, heads, E // heads).transpose(1, 2)
    K = (key @ Wk.T + bk).view(N, T, heads, E // heads).transpose(1, 2)
    V = (value @ Wv.T + bv).view(N, T, heads, E // heads).transpose(1, 2)
    scores = Q @ K.transpose(2, 3) / (E / heads) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(mask == 0, float("-inf"))
    weights = torch.softmax(scores, dim=-1) * noise
    return (weights @ V).transpose(1, 2).reshape(N, S, E) @ Wp.T + bp


def ref_layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def make_transformer_case(name, N, T, E, F_width, V, dtype):
    """(ours, reference, differentiable inputs, fixed inputs) for one Function; dropout p = 0.2 where it has one."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    p, heads, seed = 0.2, 2, 11
    ids = torch.randint(V, (N, T), generator=gen)
    mask = torch.rand(N, T, generator=gen) > 0.3
    weights = [randn(E, E, scale=E**-0.5) if i % 2 == 0 else randn(E, scale=0.1) for i in range(8)]
    if name == "linear":
        return F.linear, (lambda x, w, b: x @ w.T + b), [randn(N, T, E), randn(V, E, scale=E**-0.5), randn(V)], []
    if name == "layer_norm":
        return F.layer_norm, ref_layer_norm, [randn(N, T, E) * 3 + 1, 1 + randn(E, scale=0.1), randn(E)], []
    if name == "dropout":
        noise = seeded_noise((N, T, E), p, dtype, seed)
        return reseeded(lambda x: F.dropout(x, p), seed), (lambda x: x * noise), [randn(N, T, E)], []
    if name == "add_positions":
        encoding = F.sinusoidal_positions(T + 2, E).to(dtype)  # differentiable here, though a buffer in the model
        noise = seeded_noise((N, T, E), p, dtype, seed)
        ours = reseeded(lambda x, table: F.add_positions(x, table, p), seed)
        return ours, (lambda x, table: (x + table[:T]) * noise), [randn(N, T, E), encoding], []
    if name == "feed_forward":
        noise = seeded_noise((N, T, F_width), p, dtype, seed)
        inputs = [randn(N, T, E), randn(F_width, E, scale=E**-0.5), randn(F_width, scale=0.1),
                  randn(E, F_width, scale=F_width**-0.5), randn(E, scale=0.1)]  # fmt: skip
        ours = reseeded(lambda *args: F.feed_forward(*args, dropout_p=p), seed)
        return ours, (lambda x, w1, b1, w2, b2: (torch.relu(x @ w1.T + b1) * noise) @ w2.T + b2), inputs, []
    if name.startswith("attention"):
        # causal self-attention, cross-attention to T + 1 keys, to one key (with dropout and without)
        variant = name.split("_")[1]
        keys = {"causal": T, "cross": T + 1, "memory": 1, "image": 1}[variant]
        attn_mask = torch.tril(torch.ones(T, T, dtype=dtype)) if variant == "causal" else None
        if variant == "image":
            p = 0.0
        noise = seeded_noise((N, heads, T, keys), p, dtype, seed) if p else 1.0
        ours = reseeded(lambda *args: F.multi_head_attention(*args, heads, attn_mask, p), seed)
        return (
            ours,
            (lambda *args: ref_attention(*args, heads, attn_mask, noise)),
            [randn(N, T, E), randn(N, keys, E), randn(N, keys, E), *weights],
            [],
        )
    if name.startswith("packed") or name == "pack_rows":
        return make_packed_case(name, N, T, E, F_width, dtype, randn, weights, p, heads, seed)
    if name == "memory_mean":
        return F.memory_mean, (lambda memory: memory.sum(1) / memory.shape[1]), [randn(N, T, E)], []
    if name == "transformer_softmax_loss":

        def ref_loss(scores, y, keep):
            nll = -torch.log_softmax(scores, dim=2).gather(2, y[..., None]).squeeze(2)
            return (nll * keep).mean()

        return F.transformer_softmax_loss, ref_loss, [randn(N, T, V)], [ids, mask]
    raise KeyError(name)


def make_packed_case(name, N, T, E, F_width, dtype, randn, weights, p, heads, seed):
    """A packed Function against the unpacked math on the padded captions, its computed rows kept.

    Caption n computes its first T - n * (T - 1) // (N - 1) positions: the first all T, the last one.
    """
    lengths = torch.linspace(T, 1, N).long()
    packing = F.causal_packing(lengths, T)
    computed, P = packing.computed, int(lengths.sum())

    def unpack(rows):  # (P, E) -> (N, T, E), zeros past each prefix
        return torch.zeros(N, T, rows.shape[1], dtype=rows.dtype).index_put((computed,), rows)

    if name == "pack_rows":
        return (lambda x: F.pack_rows(x, packing)), (lambda x: x[computed]), [randn(N, T, E)], []
    if name == "packed_dropout":
        noise = seeded_noise((P, E), p, dtype, seed)  # the default masks: drawn for the computed rows only
        return reseeded(lambda x: F.packed_dropout(x, packing, p), seed), (lambda x: x * noise), [randn(P, E)], []
    if name == "packed_feed_forward_rows":
        noise = seeded_noise((P, F_width), p, dtype, seed)
        inputs = [randn(P, E), randn(F_width, E, scale=E**-0.5), randn(F_width, scale=0.1),
                  randn(E, F_width, scale=F_width**-0.5), randn(E, scale=0.1)]  # fmt: skip
        ours = reseeded(lambda *args: F.feed_forward(*args, p, packing=packing), seed)
        return ours, (lambda x, w1, b1, w2, b2: (torch.relu(x @ w1.T + b1) * noise) @ w2.T + b2), inputs, []
    if name == "packed_attention_self":
        noise = seeded_noise((N, heads, T, T), p, dtype, seed)
        causal = torch.tril(torch.ones(T, T, dtype=dtype))

        def ref(x, *params):
            padded = unpack(x)
            return ref_attention(padded, padded, padded, *params, heads, causal, noise)[computed]

        ours = reseeded(lambda *args: F.packed_attention(args[0], None, args[1:], heads, packing, p), seed)
        return ours, ref, [randn(P, E), *weights], []
    if name.startswith("packed_attention_memory_image"):  # with dropout of the attention weights, and without
        p = p if name == "packed_attention_memory_image" else 0.0
        noise = seeded_noise((P, heads), p, dtype, seed) if p else torch.ones(P, heads, dtype=dtype)

        def ref(x, memory, *params):
            padded_noise = unpack(noise).transpose(1, 2)[..., None]  # (N, H, T, 1)
            return ref_attention(unpack(x), memory, memory, *params, heads, None, padded_noise)[computed]

        ours = reseeded(lambda *args: F.packed_attention(args[0], args[1], args[2:], heads, packing, p), seed)
        return ours, ref, [randn(P, E), randn(N, 1, E), *weights], []
    if name == "packed_attention_regions":  # M = 3 memory vectors per caption, attention weights dropped
        M = 3
        noise = seeded_noise((N, heads, packing.longest, M), p, dtype, seed)  # the default masks: (N, H, L, M)

        def ref(x, memory, *params):
            return ref_attention(unpack(x), memory, memory, *params, heads, None, noise)[computed]

        ours = reseeded(lambda *args: F.packed_attention(args[0], args[1], args[2:], heads, packing, p), seed)
        return ours, ref, [randn(P, E), randn(N, M, E), *weights], []
    raise KeyError(name)


TRANSFORMER_FUNCTIONS = [
    "linear", "layer_norm", "dropout", "add_positions", "feed_forward",
    "attention_causal", "attention_cross", "attention_memory", "attention_image", "transformer_softmax_loss",
    "pack_rows", "packed_dropout", "packed_feed_forward_rows", "packed_attention_self", "packed_attention_memory_image",
    "packed_attention_memory_image_no_dropout", "packed_attention_regions", "memory_mean",
]  # fmt: skip


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", TRANSFORMER_FUNCTIONS)
def test_gradcheck_float64(name):
    fn, _, inputs, extra = make_transformer_case(name, N=2, T=3, E=4, F_width=6, V=5, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(lambda *args: fn(*args, *extra), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", TRANSFORMER_FUNCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_plain_autograd(name, dtype):
    """Same values and gradients as autograd through the same ops, with the same dropout masks."""
    fn, ref, inputs, extra = make_transformer_case(name, N=3, T=5, E=8, F_width=12, V=7, dtype=dtype)
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
    for index, (g, rg) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, rg, **tol, msg=lambda m: f"input {index}: {m}")
    for before, after in zip(inputs, ours_in):
        assert torch.equal(before, after.detach())  # inputs are never modified in place


@pytest.mark.parametrize("name", TRANSFORMER_FUNCTIONS)
def test_float32_realistic_sizes(name):
    """At COCO sizes in float32 (N = 25, T = 16, W = 256, feed-forward 2048, V = 1004): close to a float64 run."""
    sizes = dict(N=25, T=16, E=256, F_width=2048, V=1004)
    fn, _, inputs32, extra = make_transformer_case(name, dtype=torch.float32, **sizes)
    _, _, inputs64, _ = make_transformer_case(name, dtype=torch.float64, **sizes)
    ins32 = [t.requires_grad_() for t in inputs32]
    ins64 = [t.requires_grad_() for t in inputs64]
    out32, out64 = _outputs(fn(*ins32, *extra)), _outputs(fn(*ins64, *extra))
    gen = torch.Generator().manual_seed(2)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out64]
    grads32 = torch.autograd.grad(out32, ins32, [u.float() for u in upstream])
    grads64 = torch.autograd.grad(out64, ins64, upstream)
    for o32, o64 in zip(out32, out64):
        assert torch.isfinite(o32).all()
        torch.testing.assert_close(o32.double(), o64, rtol=1e-4, atol=1e-4)
    # b_key's gradient is zero in exact arithmetic (a shift of every score of a row): each gradient is
    # measured against its own largest entry, but no less than a thousandth of the largest of all.
    floor = 1e-3 * max(g.abs().max() for g in grads64)
    for g32, g64 in zip(grads32, grads64):
        assert torch.isfinite(g32).all()
        assert ((g32.double() - g64).abs().max() / g64.abs().max().clamp_min(floor)) < 1e-4


def test_attention_gives_one_gradient_sum_when_query_key_and_value_are_one_tensor():
    """Self-attention passes one tensor three times; its gradient is the sum of the three paths."""
    _, _, inputs, _ = make_transformer_case("attention_causal", N=2, T=3, E=4, F_width=6, V=5, dtype=torch.float64)
    x = inputs[0].clone().requires_grad_()
    weights = inputs[3:]
    mask = torch.tril(torch.ones(3, 3))
    (grad_once,) = torch.autograd.grad(F.multi_head_attention(x, x, x, *weights, 2, mask).sum(), x)
    parts = [x.detach().clone().requires_grad_() for _ in range(3)]
    grads = torch.autograd.grad(F.multi_head_attention(*parts, *weights, 2, mask).sum(), parts)
    torch.testing.assert_close(grad_once, sum(grads), rtol=1e-12, atol=1e-12)


def test_attention_backward_skips_unneeded_products(monkeypatch):
    """With only W_proj requiring grad, backward does one product (dW_proj); with all inputs, eight."""
    import caption_torch.functional.attention as attention

    _, _, inputs, _ = make_transformer_case("attention_cross", N=2, T=3, E=4, F_width=6, V=5, dtype=torch.float64)
    products = []
    real_mm = attention._mm
    monkeypatch.setattr(attention, "_mm", lambda a, b: products.append(1) or real_mm(a, b))

    def backward_products(requiring):
        args = [t.detach().clone().requires_grad_(i in requiring) for i, t in enumerate(inputs)]
        out = F.multi_head_attention(*args, 2)
        products.clear()
        torch.autograd.grad(out.sum(), [args[i] for i in requiring])
        return len(products)

    # All 11 inputs: d context, dW_proj, then (dx, dW) for query, key and value: 8 matrix products.
    assert backward_products(set(range(11))) == 8
    assert backward_products({9}) == 1  # dW_proj alone


# --------------------------------------------------------------------------- #
# Bad inputs: a ValueError naming what is wrong
# --------------------------------------------------------------------------- #


def _attention_args(E=4, T=3):
    return [torch.randn(2, 3, E), torch.randn(2, T, E), torch.randn(2, T, E)] + [
        torch.randn(E, E) if i % 2 == 0 else torch.randn(E) for i in range(8)
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(num_heads=3), "num_heads=3 must divide the embed width 4 of query"),
        (dict(num_heads=0), "num_heads must be a positive integer"),
        (dict(attn_mask=torch.ones(3, 4)), "attn_mask must be an \\(S, T\\) = \\(3, 3\\) tensor, got \\(3, 4\\)"),
        (dict(attn_mask=torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 1]])), "attn_mask row 1 allows no key"),
        (dict(attn_mask=torch.full((3, 3), float("-inf")).triu(1)), "attn_mask must hold only 0 and 1"),
        (dict(key=torch.randn(2, 0, 4), value=torch.randn(2, 0, 4)), "key holds T = 0 positions"),
        (dict(dropout_p=2.0), "dropout_p must be a probability"),
        (dict(key=torch.randn(3, 3, 4)), "key has size 3 in dimension 0 but the batch size of query is 2"),
        (dict(value=torch.randn(2, 2, 4)), "value has shape \\(2, 2, 4\\) but key has \\(2, 3, 4\\)"),
        (dict(W_key=torch.randn(4, 5)), "W_key must have shape \\(4, 4\\)"),
        (dict(b_proj=torch.randn(5)), "b_proj must have shape \\(4,\\)"),
        (dict(query=torch.randn(2, 3)), "query must have 3 dimensions"),
        (dict(b_value=torch.randn(4, dtype=torch.float64)), "share one dtype"),
    ],
)
def test_attention_bad_inputs(change, message):
    names = ["query", "key", "value", "W_query", "b_query", "W_key", "b_key", "W_value", "b_value", "W_proj", "b_proj"]
    args = dict(zip(names, _attention_args()), num_heads=2)
    with pytest.raises(ValueError, match=message):
        F.multi_head_attention(**{**args, **change})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: F.linear(torch.randn(2, 3), torch.randn(4, 5), torch.randn(4)), "weight has size 5 in dimension 1"),
        (lambda: F.linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(5)), "bias has size 5 .* weight is 4"),
        (lambda: F.linear(torch.ones(2, 3, dtype=torch.long), torch.randn(4, 3), torch.randn(4)), "x must be a float"),
        (lambda: F.linear(torch.randn(2, 0), torch.randn(4, 0), torch.randn(4)), "x has width 0"),
        (lambda: F.temporal_affine(torch.randn(2, 3, 0), torch.randn(0, 4), torch.randn(4)), "x has width 0"),
        (lambda: F.feed_forward(torch.randn(2, 0), torch.randn(6, 0), torch.randn(6), torch.randn(0, 6),
                                torch.randn(0), activation="gelu"), "x has width 0"),
        (lambda: F.layer_norm(torch.randn(2, 3), torch.ones(4), torch.zeros(3)), "weight has size 4"),
        (lambda: F.layer_norm(torch.randn(2, 3), torch.ones(3), torch.zeros(3), eps=0), "eps must be a positive"),
        (lambda: F.feed_forward(torch.randn(2, 3), torch.randn(6, 3), torch.randn(6), torch.randn(3, 5),
                                torch.randn(3)), "weight2 has size 5 in dimension 1 but the output width of weight1"),
        (lambda: F.feed_forward(torch.randn(2, 3), torch.randn(6, 3), torch.randn(6), torch.randn(3, 6),
                                torch.randn(3), dropout_p=-1), "dropout_p must be a probability"),
        (lambda: F.add_positions(torch.randn(1, 5, 4), torch.randn(3, 4)), "encoding has 3 positions but x has T = 5"),
        (lambda: F.add_positions(torch.randn(1, 2, 4), torch.randn(3, 6)), "encoding has size 6 in dimension 1"),
        (lambda: F.dropout([1.0], 0.5), "x must be a torch.Tensor"),
        (lambda: F.transformer_softmax_loss(torch.randn(2, 3, 4), torch.full((2, 3), 4), torch.ones(2, 3)),
         "token id 4, outside the vocabulary"),
        (lambda: F.transformer_softmax_loss(torch.randn(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                                            torch.ones(2, 0)), "T = 0 positions"),
    ],
)  # fmt: skip
def test_layer_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_transformer_loss_divides_by_every_position():
    scores = torch.zeros(4, 3, 5, dtype=torch.float64)
    keep = torch.zeros(4, 3, dtype=torch.bool)
    keep[0, 0] = True  # one counted position out of 12
    loss = F.transformer_softmax_loss(scores, torch.zeros(4, 3, dtype=torch.long), keep)
    torch.testing.assert_close(loss, torch.log(torch.tensor(5.0, dtype=torch.float64)) / 12)


@pytest.mark.parametrize("name", ["dropout", "feed_forward", "self_attention", "memory_attention"])
def test_packed_mkl_masks_give_the_rows_of_the_unpacked_layer(name):
    """Inside mkl_dropout the packed layers draw the unpacked (N, T, ...) masks: cs231n's values, row for row."""
    N, T, E, heads, p = 3, 5, 8, 2, 0.3
    packing = F.causal_packing(torch.tensor([4, 2, 3]), T)  # L = 4 < T: masks cut to L
    gen = torch.Generator().manual_seed(0)
    x, memory = torch.randn(N, T, E, generator=gen), torch.randn(N, 1, E, generator=gen)
    weights = [torch.randn(E, E, generator=gen) * E**-0.5 if i % 2 == 0 else torch.randn(E, generator=gen) * 0.1
               for i in range(8)]  # fmt: skip
    ffn = [torch.randn(12, E, generator=gen) * E**-0.5, torch.randn(12, generator=gen),
           torch.randn(E, 12, generator=gen) * 12**-0.5, torch.randn(E, generator=gen)]  # fmt: skip
    rows, causal = x[packing.computed], torch.tril(torch.ones(T, T))
    unpacked, packed = {
        "dropout": (lambda: F.dropout(x, p), lambda: F.packed_dropout(rows, packing, p)),
        "feed_forward": (lambda: F.feed_forward(x, *ffn, p), lambda: F.feed_forward(rows, *ffn, p, packing=packing)),
        "self_attention": (lambda: F.multi_head_attention(x, x, x, *weights, heads, causal, p),
                           lambda: F.packed_attention(rows, None, weights, heads, packing, p)),
        "memory_attention": (lambda: F.multi_head_attention(x, memory, memory, *weights, heads, None, p),
                             lambda: F.packed_attention(rows, memory, weights, heads, packing, p)),
    }[name]  # fmt: skip
    with F.mkl_dropout():
        torch.manual_seed(7)
        expected = unpacked()[packing.computed]
        torch.manual_seed(7)
        got = packed()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def _packing():
    return F.causal_packing(torch.tensor([3, 1]), 3)  # P = 4 rows


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: F.causal_packing(torch.tensor([4, 1]), 3), "lengths must lie in \\[0, T = 3\\]"),
        (lambda: F.causal_packing(torch.tensor([0, 0]), 3), "at least one positive"),
        (lambda: F.causal_packing(torch.tensor([1.0]), 3), "lengths must be an \\(N,\\) int64"),
        (lambda: F.causal_packing(torch.tensor([True, False]), 3), "lengths must be an \\(N,\\) int64"),
        (lambda: F.causal_packing(torch.tensor([1, 2], dtype=torch.uint8), 3), "lengths must be an \\(N,\\) int64"),
        (lambda: F.causal_packing(torch.tensor([1]), "3"), "T must be a positive integer"),
        (lambda: F.pack_rows(torch.randn(2, 3, 5), torch.tensor([3, 1])), "packing must be a CausalPacking"),
        (lambda: F.feed_forward(torch.randn(4, 8), torch.randn(6, 8), torch.randn(6), torch.randn(8, 6),
                                torch.randn(8), packing=torch.tensor([3, 1])), "packing must be a CausalPacking"),
        (lambda: F.packed_attention(torch.randn(4, 8), None, _attention_args(E=8)[3:], 2, torch.tensor([3, 1])),
         "packing must be a CausalPacking"),
        (lambda: F.pack_rows(torch.randn(2, 4, 5), _packing()), "x has \\(N, T\\) = \\(2, 4\\)"),
        (lambda: F.packed_dropout(torch.randn(5, 8), _packing(), 0.1), "x has 5 rows but the packing has P = 4"),
        (lambda: F.packed_dropout(torch.randn(4, 8), _packing(), 1.5), "p must be a probability"),
        (lambda: F.feed_forward(torch.randn(4, 8), torch.randn(6, 7), torch.randn(6), torch.randn(8, 6),
                                torch.randn(8), packing=_packing()), "weight1 has size 7 in dimension 1"),
        (lambda: F.feed_forward(torch.randn(5, 8), torch.randn(6, 8), torch.randn(6), torch.randn(8, 6),
                                torch.randn(8), packing=_packing()), "x has 5 rows but the packing has P = 4"),
        (lambda: F.packed_attention(torch.randn(4, 8), None, _attention_args(E=8)[3:], 3, _packing()),
         "num_heads=3 must divide the width 8 of x"),
        (lambda: F.packed_attention(torch.randn(4, 8), None, _attention_args(E=8)[3:9], 2, _packing()),
         "maps must be the eight weights and biases W_query, b_query"),
        (lambda: F.packed_attention(torch.randn(4, 4), None, _attention_args(E=8)[3:], 2, _packing()),
         "W_query must have shape \\(4, 4\\)"),
        (lambda: F.packed_attention(torch.randn(4, 8), torch.randn(3, 2, 8), _attention_args(E=8)[3:], 2,
                                    _packing()), "memory must have shape \\(N, M, E\\) = \\(2, M >= 1, 8\\)"),
    ],
)  # fmt: skip
def test_packed_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_feed_forward_weight_gradients_come_in_the_weights_own_layout():
    """A gradient strided unlike its parameter is copied by autograd before the optimizer sees it."""
    x = torch.randn(2, 7, 16)
    weights = [torch.randn(64, 16), torch.randn(64), torch.randn(16, 64), torch.randn(16)]
    for weight in weights:
        weight.requires_grad_()
    out = F.feed_forward(x, *weights, dropout_p=0.1)
    for weight, grad in zip(weights, torch.autograd.grad(out.square().sum(), weights)):
        assert grad.shape == weight.shape and grad.stride() == weight.stride()
