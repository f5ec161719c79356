"""bf16 autocast (CPU here; the same code path serves CUDA): products in bf16, losses in float32."""

import pytest
import torch

import caption_torch.functional as F
from caption_torch import CaptioningRNN

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i + 4 for i in range(60)}}


def coco_like_batch(N=64, T=17, seed=0):
    gen = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, len(VOCAB), (N, T), generator=gen)
    lengths = torch.randint(6, T - 1, (N,), generator=gen)
    captions[:, 0] = 1
    for n, length in enumerate(lengths.tolist()):
        captions[n, length] = 2
        captions[n, length + 1 :] = 0
    return torch.randn(N, 512, generator=gen), captions


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_bf16_autocast_loss_close_to_float32(cell_type, device):
    torch.manual_seed(0)
    model = CaptioningRNN(VOCAB, 512, 256, 512, cell_type).to(device)
    features, captions = (t.to(device) for t in coco_like_batch())
    loss32 = model.loss(features, captions)
    grads32 = torch.autograd.grad(loss32, list(model.parameters()))
    with torch.autocast(device, dtype=torch.bfloat16):
        loss16 = model.loss(features, captions)
    grads16 = torch.autograd.grad(loss16, list(model.parameters()))
    assert loss16.dtype == torch.float32  # the loss stays float32
    # Stated tolerance: bf16 products keep 8 bits of mantissa; the loss agrees to 1e-3 relative.
    assert abs(loss16.item() - loss32.item()) / loss32.item() < 1e-3
    for g16, g32 in zip(grads16, grads32):
        assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
        assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.999


def test_autocast_dtypes_of_each_function():
    x, h0 = torch.randn(3, 4, 5), torch.randn(3, 6)
    Wx, Wh, b = torch.randn(5, 24), torch.randn(6, 24), torch.randn(24)
    y, mask = torch.randint(7, (3, 4)), torch.ones(3, 4, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.lstm(x, h0, Wx, Wh, b).dtype == torch.bfloat16  # products in bf16
        assert F.rnn(x, h0, Wx[:, :6], Wh[:, :6], b[:6]).dtype == torch.bfloat16
        assert F.temporal_affine(x, Wx, b).dtype == torch.bfloat16
        hidden = F.rnn(x, h0, Wx[:, :6], Wh[:, :6], b[:6])
        assert F.vocab_softmax_loss(hidden, torch.randn(6, 7), torch.zeros(7), y, mask).dtype == torch.float32
        assert F.temporal_softmax_loss(torch.randn(3, 4, 7), y, mask).dtype == torch.float32


def test_without_autocast_mixed_dtypes_are_still_an_error():
    with pytest.raises(ValueError, match="share one dtype"):
        F.temporal_affine(torch.randn(2, 3, 4), torch.randn(4, 5, dtype=torch.float64), torch.randn(5))


def test_autocast_leaves_float64_alone_like_native_autocast():
    x, W, b = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64), torch.randn(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.addmm(b.double(), x[0], W).dtype == torch.float64  # what native autocast does
        assert F.temporal_affine(x, W, b.double()).dtype == torch.float64
        with pytest.raises(ValueError, match="float64 inputs are not cast.*torch.bfloat16, torch.float64"):
            F.temporal_affine(x, W, b)  # b (float32) is cast, x and W are not
