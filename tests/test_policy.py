"""policy_gradient_loss: the per-caption weighted softmax loss of self-critical training."""

import pytest
import torch

import caption_torch.functional as F


def make_inputs(N=4, T=5, H=6, V=7, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, dtype=dtype, generator=generator)
    W_vocab = torch.randn(H, V, dtype=dtype, generator=generator) / H**0.5
    b_vocab = torch.randn(V, dtype=dtype, generator=generator)
    y = torch.randint(0, V, (N, T), generator=generator)
    lengths = torch.randint(0, T + 1, (N,), generator=generator)
    mask = torch.arange(T)[None] < lengths[:, None]  # a prefix per caption, one may be empty
    weights = torch.randn(N, dtype=dtype, generator=generator)  # advantages: either sign
    return hidden, W_vocab, b_vocab, y, mask, weights


def plain(hidden, W_vocab, b_vocab, y, mask, weights):
    """The same loss from ordinary torch ops, differentiated by autograd."""
    log_probs = torch.log_softmax(hidden @ W_vocab + b_vocab, dim=-1)  # (N, T, V)
    picked = log_probs.gather(2, y[..., None])[..., 0] * mask  # (N, T)
    return -(picked.sum(1) * weights).sum() / hidden.shape[0]


def per_word(weights, T=5):
    """(N,) caption weights as (N, T) word weights, each word a different multiple of its caption's."""
    return weights[:, None] * torch.linspace(0.5, 2.0, T, dtype=weights.dtype)


def test_gradcheck_float64():
    hidden, W_vocab, b_vocab, y, mask, weights = make_inputs()
    inputs = [t.requires_grad_() for t in (hidden, W_vocab, b_vocab)]
    assert torch.autograd.gradcheck(lambda h, W, b: F.policy_gradient_loss(h, W, b, y, mask, weights), inputs)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_matches_plain_autograd(dtype, tolerance):
    tensors = make_inputs(dtype=dtype, seed=1)
    ours = [t.clone().requires_grad_() for t in tensors[:3]]
    theirs = [t.clone().requires_grad_() for t in tensors[:3]]
    loss = F.policy_gradient_loss(*ours, *tensors[3:])
    expected = plain(*theirs, *tensors[3:])
    torch.testing.assert_close(loss, expected, rtol=tolerance, atol=tolerance)
    for grad, grad_expected in zip(torch.autograd.grad(loss, ours), torch.autograd.grad(expected, theirs)):
        torch.testing.assert_close(grad, grad_expected, rtol=tolerance, atol=tolerance)


def test_float32_at_realistic_sizes_is_close_to_float64():
    """250 sampled captions (50 images x 5 samples), 16 words, H = 512, V = 1004."""
    tensors64 = make_inputs(N=250, T=16, H=512, V=1004, seed=2)
    ins64 = [t.clone().requires_grad_() for t in tensors64[:3]]
    ins32 = [t.float().requires_grad_() for t in tensors64[:3]]
    loss64 = F.policy_gradient_loss(*ins64, tensors64[3], tensors64[4], tensors64[5])
    loss32 = F.policy_gradient_loss(*ins32, tensors64[3], tensors64[4], tensors64[5].float())
    assert abs(loss32.item() - loss64.item()) <= 1e-4 * max(1.0, abs(loss64.item()))
    for g32, g64 in zip(torch.autograd.grad(loss32, ins32), torch.autograd.grad(loss64, ins64)):
        assert torch.isfinite(g32).all()
        assert (g32.double() - g64).abs().max() / g64.abs().max() < 1e-4


def test_unit_weights_give_the_cross_entropy_loss():
    hidden, W_vocab, b_vocab, y, mask, _ = make_inputs(seed=3)
    weighted = F.policy_gradient_loss(hidden, W_vocab, b_vocab, y, mask, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(weighted, F.vocab_softmax_loss(hidden, W_vocab, b_vocab, y, mask), rtol=1e-14, atol=0)


def test_a_negative_weight_pushes_the_sampled_word_down():
    """One step of gradient descent makes a caption with a positive advantage likelier and a negative one rarer."""
    hidden, W_vocab, b_vocab, y, mask, _ = make_inputs(N=2, seed=4)
    mask[:] = True
    weights = torch.tensor([1.0, -1.0], dtype=torch.float64)
    b = b_vocab.clone().requires_grad_()
    (grad_b,) = torch.autograd.grad(F.policy_gradient_loss(hidden, W_vocab, b, y, mask, weights), b)
    stepped = b_vocab - 0.1 * grad_b

    def log_likelihood(bias):
        return torch.log_softmax(hidden @ W_vocab + bias, -1).gather(2, y[..., None])[..., 0].sum(1)

    before, after = log_likelihood(b_vocab), log_likelihood(stepped)
    assert after[0] > before[0] and after[1] < before[1]


def test_inputs_are_not_modified():
    tensors = make_inputs(seed=5)
    copies = [t.clone() for t in tensors]
    ins = [t.requires_grad_() for t in tensors[:3]]
    F.policy_gradient_loss(*ins, *tensors[3:]).backward()
    for t, copy in zip(tensors, copies):
        assert torch.equal(t.detach(), copy)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(weights=a["weights"][:3]), "weights has 3 entries but there are 4 captions"),
        (lambda a: a.update(weights=a["weights"][:, None]), r"weights of every word must be \(N, T\) = \(4, 5\)"),
        (lambda a: a.update(weights=a["weights"][:, None, None]), "weights must have 1 dimensions"),
        (lambda a: a.update(weights=torch.full((4, 5), float("nan"), dtype=torch.float64)), "weights must be finite"),
        (lambda a: a["weights"].__setitem__(1, float("nan")), "weights must be finite"),
        (lambda a: a["weights"].__setitem__(0, float("inf")), "weights must be finite"),
        (lambda a: a.update(weights=torch.ones(4, dtype=torch.long)), "weights must be a floating-point tensor"),
        (lambda a: a.update(y=a["y"] + 7), "outside the vocabulary"),
        (lambda a: a.update(mask=a["mask"][:, :2]), "mask must be a tensor of shape"),
    ],
)
def test_bad_inputs_are_refused(change, message):
    args = dict(zip(("hidden", "W_vocab", "b_vocab", "y", "mask", "weights"), make_inputs()))
    change(args)
    with pytest.raises(ValueError, match=message):
        F.policy_gradient_loss(**args)


def test_per_word_weights_gradcheck_and_plain_autograd():
    hidden, W_vocab, b_vocab, y, mask, weights = make_inputs(seed=2)
    word_weights = per_word(weights)
    inputs = [t.clone().requires_grad_() for t in (hidden, W_vocab, b_vocab)]
    assert torch.autograd.gradcheck(lambda h, W, b: F.policy_gradient_loss(h, W, b, y, mask, word_weights), inputs)
    theirs = [t.clone().requires_grad_() for t in (hidden, W_vocab, b_vocab)]
    log_probs = torch.log_softmax(theirs[0] @ theirs[1] + theirs[2], dim=-1).gather(2, y[..., None])[..., 0]
    expected = -(log_probs * mask * word_weights).sum() / hidden.shape[0]
    loss = F.policy_gradient_loss(*inputs, y, mask, word_weights)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for ours, grad in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(expected, theirs)):
        torch.testing.assert_close(ours, grad, rtol=1e-12, atol=1e-12)


def test_per_word_weights_equal_to_their_captions_give_the_per_caption_loss():
    hidden, W_vocab, b_vocab, y, mask, weights = make_inputs(seed=3)
    per_caption = F.policy_gradient_loss(hidden, W_vocab, b_vocab, y, mask, weights)
    expanded = F.policy_gradient_loss(hidden, W_vocab, b_vocab, y, mask, weights[:, None].expand(4, 5))
    torch.testing.assert_close(expanded, per_caption, rtol=0, atol=0)
