"""The Transformer's Functions: dropout masks (torch's and Intel MKL's), gradcheck, plain autograd, bad inputs."""

import pytest
import torch

import caption_torch.functional as F

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


def test_default_masks_are_torchs_own_dropout():
    x = torch.randn(6, 50)
    torch.manual_seed(3)
    expected = torch.nn.functional.dropout(x, 0.25)
    after_expected = torch.rand(())
    torch.manual_seed(3)
    ours = F.dropout(x, 0.25)
    assert torch.equal(ours, expected) and torch.equal(torch.rand(()), after_expected)


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
