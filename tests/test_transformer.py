"""CaptioningTransformer against cs231n's model in torch.nn: construction, scores, loss, gradients, sampling."""

import copy
import math

import pytest
import torch
from torch import nn

import caption_torch.functional as F
from caption_torch import CaptioningTransformer
from caption_torch.models.decoding import beam_search, caption_log_probs
from caption_torch.models.transformer import MultiHeadAttention, PositionalEncoding

WORDS = {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3, "cat": 4, "dog": 5, "on": 6, "mat": 7}

# --------------------------------------------------------------------------- #
# cs231n's modules in torch.nn (the reference)
# --------------------------------------------------------------------------- #


class RefAttention(nn.Module):
    def __init__(self, E, heads, p=0.1):
        super().__init__()
        self.key, self.query, self.value, self.proj = (nn.Linear(E, E) for _ in range(4))
        self.attn_drop = nn.Dropout(p)
        self.heads = heads

    def forward(self, query, key, value, attn_mask=None):
        N, S, E = query.shape
        T, H = value.shape[1], self.heads
        Q = self.query(query).view(N, S, H, E // H).transpose(1, 2)
        K = self.key(key).view(N, T, H, E // H).transpose(1, 2)
        V = self.value(value).view(N, T, H, E // H).transpose(1, 2)
        scores = Q @ K.transpose(2, 3) / math.sqrt(E / H)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, float("-inf"))
        weights = self.attn_drop(torch.softmax(scores, dim=-1))
        return self.proj((weights @ V).transpose(1, 2).reshape(N, S, E))


class RefPositions(nn.Module):
    def __init__(self, E, p=0.1, max_len=5000):
        super().__init__()
        self.dropout = nn.Dropout(p)
        pe = torch.zeros(1, max_len, E)
        for i in range(max_len):
            for j in range(0, E, 2):
                pe[0, i, j] = math.sin(i * 10000 ** (-j / E))
                pe[0, i, j + 1] = math.cos(i * 10000 ** (-j / E))
        self.register_buffer("pe", pe)

    def forward(self, x):
        return self.dropout(x + self.pe[:, : x.shape[1]])


class RefLayer(nn.Module):
    def __init__(self, W, heads, hidden=2048, p=0.1):
        super().__init__()
        self.self_attn = RefAttention(W, heads, p)
        self.multihead_attn = RefAttention(W, heads, p)
        self.linear1 = nn.Linear(W, hidden)
        self.dropout = nn.Dropout(p)
        self.linear2 = nn.Linear(hidden, W)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(W), nn.LayerNorm(W), nn.LayerNorm(W)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(p), nn.Dropout(p), nn.Dropout(p)

    def forward(self, tgt, memory, tgt_mask):
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(tgt, tgt, tgt, tgt_mask)))
        tgt = self.norm2(tgt + self.dropout2(self.multihead_attn(tgt, memory, memory)))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(torch.relu(self.linear1(tgt))))))


class RefDecoder(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, tgt, memory, tgt_mask):
        for layer in self.layers:
            tgt = layer(tgt, memory, tgt_mask)
        return tgt


class RefModel(nn.Module):
    def __init__(self, word_to_idx, D, W, heads=4, num_layers=2, max_length=50, layer=None):
        """``layer``: the decoder layer's class (cs231n 2021-24's ``RefLayer`` by default)."""
        super().__init__()
        V = len(word_to_idx)
        self.visual_projection = nn.Linear(D, W)
        self.embedding = nn.Embedding(V, W, padding_idx=word_to_idx["<NULL>"])
        self.positional_encoding = RefPositions(W, max_len=max_length)
        self.transformer = RefDecoder((layer or RefLayer)(W, heads), num_layers)
        self.apply(self._init_weights)
        self.output = nn.Linear(W, V)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear):
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, features, captions):
        T = captions.shape[1]
        words = self.positional_encoding(self.embedding(captions))
        memory = self.visual_projection(features)  # (N, M, W), or (N, W) for one vector per image
        memory = memory.unsqueeze(1) if memory.dim() == 2 else memory
        return self.output(self.transformer(words, memory, torch.tril(torch.ones(T, T))))


def ref_loss(scores, captions_out, null=0):
    N, T, V = scores.shape
    nll = nn.functional.cross_entropy(scores.reshape(N * T, V), captions_out.reshape(N * T), reduction="none")
    return (nll * (captions_out.reshape(N * T) != null)).mean()


def both_models(D=6, W=8, heads=2, layers=2, max_length=12, seed=231):
    torch.manual_seed(seed)
    ours = CaptioningTransformer(WORDS, D, W, num_heads=heads, num_layers=layers, max_length=max_length)
    after_ours = torch.rand(())  # the generator's position after construction
    torch.manual_seed(seed)
    ref = RefModel(WORDS, D, W, heads, layers, max_length)
    assert torch.equal(torch.rand(()), after_ours), "construction must draw from the generator as cs231n's does"
    return ours, ref


def batch(N=4, T=7, D=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(N, D, generator=gen)
    captions = torch.randint(3, len(WORDS), (N, T), generator=gen)
    captions[:, 0] = WORDS["<START>"]
    for n, end in enumerate(torch.linspace(T - 1, 2, N).long().tolist()):  # captions of several lengths
        captions[n, end] = WORDS["<END>"]
        captions[n, end + 1 :] = WORDS["<NULL>"]
    return features, captions


# --------------------------------------------------------------------------- #
# Against the reference
# --------------------------------------------------------------------------- #


def test_construction_draws_parameters_in_cs231n_order():
    ours, ref = both_models()
    ours_params, ref_params = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert list(ours_params) == list(ref_params)  # names and order: parameters() lines up with cs231n's
    for name, param in ours_params.items():
        assert torch.equal(param, ref_params[name]), name
    torch.testing.assert_close(ours.positional_encoding.pe, ref.positional_encoding.pe, rtol=0, atol=1e-7)
    assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("masks", ["none", "mkl"])
def test_training_scores_loss_and_gradients_match_the_reference(masks):
    """Train mode, the loss computed on packed captions. Dropout on everywhere with MKL masks: with the same
    seed both draw the same masks in the same order (the packed model at the unpacked shapes). Or every
    dropout probability 0 (the default masks are drawn for the computed positions only, so they differ)."""
    ours, ref = both_models()
    features, captions = batch()
    for module in ref.modules():
        if isinstance(module, nn.Dropout) and masks == "none":
            module.p = 0.0
        elif isinstance(module, nn.Dropout):  # the reference's nn.Dropout draws torch's own masks: give it ours
            module.forward = lambda x, p=module.p: F.dropout(x, p, True)
    if masks == "none":
        for module in ours.modules():
            if isinstance(getattr(module, "dropout", None), float):
                module.dropout = 0.0
    assert_loss_and_gradients_match(ours, ref, features, captions, masks == "mkl", dict(rtol=1e-5, atol=1e-6),
                                    dict(rtol=1e-4, atol=1e-6))  # fmt: skip


def assert_loss_and_gradients_match(ours, ref, features, captions, mkl: bool, loss_tol: dict, grad_tol: dict):
    """The project's loss (packed captions) and the reference's plain-autograd loss, each after
    ``torch.manual_seed(5)`` (inside ``mkl_dropout()`` with ``mkl``), and every parameter's gradient agree."""
    with F.mkl_dropout() if mkl else torch.autograd.set_grad_enabled(True):
        torch.manual_seed(5)
        loss = ours.loss(features, captions)
        torch.manual_seed(5)
        expected = ref_loss(ref(features, captions[:, :-1]), captions[:, 1:])
    torch.testing.assert_close(loss, expected, **loss_tol)
    grads = torch.autograd.grad(loss, list(ours.parameters()))
    ref_grads = torch.autograd.grad(expected, list(ref.parameters()), allow_unused=True)
    assert len(grads) == len(ref_grads) == len(list(ref.parameters()))
    for (name, _), grad, ref_grad in zip(ours.named_parameters(), grads, ref_grads):
        if name == "embedding.weight":  # nn.Embedding's padding row gets no gradient; its inputs affect no score
            ref_grad = ref_grad.clone()
            ref_grad[0] = grad[0]
            assert grad[0].abs().max() == 0
        torch.testing.assert_close(grad, ref_grad, **grad_tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("masks", ["mkl", "none"])
def test_memory_of_five_vectors_per_image_matches_plain_autograd(masks):
    """Features (N, M = 5, D) in float64, train mode: the packed loss, the per-caption and per-word weighted
    losses and every parameter's gradient equal the reference's (plain autograd, attention over M keys);
    the cached steps score as the whole model; greedy is the reference's greedy and beam search runs."""
    ours, ref = both_models(seed=7)
    ours, ref = ours.double(), ref.double()
    features, captions = batch(N=4, T=7)
    features = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for module in ref.modules():
        if isinstance(module, nn.Dropout) and masks == "none":
            module.p = 0.0
        elif isinstance(module, nn.Dropout):  # the reference's nn.Dropout draws torch's own masks: give it ours
            module.forward = lambda x, p=module.p, m=module: F.dropout(x, p, m.training)
    if masks == "none":
        for module in ours.modules():
            if isinstance(getattr(module, "dropout", None), float):
                module.dropout = 0.0
    N, T = captions.shape[0], captions.shape[1] - 1
    mask = captions[:, 1:] != WORDS["<NULL>"]
    weights = torch.tensor([1.5, -0.5, 2.0, 0.25], dtype=torch.float64)
    with F.mkl_dropout() if masks == "mkl" else torch.autograd.set_grad_enabled(True):
        torch.manual_seed(5)
        loss = ours.loss(features, captions)
        torch.manual_seed(5)
        scores = ref(features, captions[:, :-1])
        expected = ref_loss(scores, captions[:, 1:])
        torch.manual_seed(5)
        weighted = ours.weighted_loss(features, captions, mask, weights[:, None].expand(N, T).contiguous())
    nll = nn.functional.cross_entropy(scores.transpose(1, 2), captions[:, 1:], reduction="none")  # (N, T)
    expected_weighted = (weights[:, None] * nll * mask).sum() / N
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, expected, **tol)
    torch.testing.assert_close(weighted, expected_weighted, **tol)
    for ours_loss, ref_loss_value in ((loss, expected), (weighted, expected_weighted)):
        grads = torch.autograd.grad(ours_loss, list(ours.parameters()))
        ref_grads = torch.autograd.grad(ref_loss_value, list(ref.parameters()), retain_graph=True, allow_unused=True)
        for (name, _), grad, ref_grad in zip(ours.named_parameters(), grads, ref_grads):
            if name == "embedding.weight":  # nn.Embedding's padding row gets no gradient; its inputs affect no score
                ref_grad = ref_grad.clone()
                ref_grad[0] = grad[0]
            torch.testing.assert_close(grad, ref_grad, **tol, msg=lambda m: f"{name}: {m}")

    ours.eval(), ref.eval()
    expected_scores = ref(features, captions[:, :-1])
    torch.testing.assert_close(ours(features, captions[:, :-1]), expected_scores, **tol)
    state = ours.initial_state(features)
    for t in range(T):
        step_scores, state = ours.step(captions[:, t], state)
        torch.testing.assert_close(step_scores, expected_scores[:, t], **tol)
    with torch.no_grad():
        assert torch.equal(ours.sample(features, 6), ours.sample_without_cache(features, 6))
        greedy = reference_greedy(ref, features, 6)
    sampled, ended = ours.sample(features, 6), torch.zeros(4, dtype=torch.bool)
    for t in range(6):  # the reference's greedy words, <NULL> after <END>
        assert torch.equal(sampled[:, t], greedy[:, t].masked_fill(ended, WORDS["<NULL>"])), t
        ended |= greedy[:, t] == WORDS["<END>"]
    assert torch.equal(beam_search(ours, features, beam_size=1, max_length=6), sampled)  # one beam is greedy
    beams = beam_search(ours, features, beam_size=3, max_length=6)
    assert beams.shape == (4, 6) and bool(torch.isfinite(caption_log_probs(ours, features, beams)).all())


def test_loss_of_captions_cut_short_or_with_nothing_scored():
    """Packing computes each caption up to its last scored word; a batch with none scored has loss 0."""
    ours, ref = both_models()
    ours.eval(), ref.eval()
    features, captions = batch()
    captions[1, 3] = WORDS["<NULL>"]  # a <NULL> inside a caption: the positions after it still count
    torch.testing.assert_close(
        ours.loss(features, captions), ref_loss(ref(features, captions[:, :-1]), captions[:, 1:])
    )
    captions[:, 1:] = WORDS["<NULL>"]
    loss = ours.loss(features, captions)
    assert loss.item() == 0
    assert all(grad.abs().max() == 0 for grad in torch.autograd.grad(loss, list(ours.parameters())))


def test_eval_scores_match_the_reference_in_float64():
    ours, ref = both_models()
    ours.double().eval(), ref.double().eval()
    features, captions = batch()
    features = features.double()
    torch.testing.assert_close(ours(features, captions), ref(features, captions), rtol=1e-12, atol=1e-12)


def test_modules_match_the_reference_modules(monkeypatch):
    # nn.Dropout in the reference draws the project's default masks, so both draw the same ones.
    monkeypatch.setattr(nn.functional, "dropout", lambda x, p, training, inplace=False: F.dropout(x, p, training))
    torch.manual_seed(3)
    attention = MultiHeadAttention(8, 2)
    torch.manual_seed(3)
    ref_attention = RefAttention(8, 2)
    x, memory = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    mask = torch.randn(5, 3) < 0.8
    mask[:, 0] = True  # every query may attend somewhere
    for module in (attention, ref_attention):
        torch.manual_seed(9)
        module.result = module(x, memory, memory, mask)
    torch.testing.assert_close(attention.result, ref_attention.result, rtol=1e-5, atol=1e-6)
    torch.manual_seed(4)
    ours = PositionalEncoding(6, max_len=7)(x[:, :, :6])
    torch.manual_seed(4)
    torch.testing.assert_close(ours, RefPositions(6, max_len=7)(x[:, :, :6]), rtol=1e-6, atol=1e-6)


def test_mkl_masks_give_the_notebook_values():
    from caption_torch.check import check_positional_encoding, check_transformer_attention

    lines = [*check_transformer_attention(), *check_positional_encoding()]
    assert len(lines) == 4
    for line in lines:
        assert line.value < 1e-3, line.format()


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #


def reference_greedy(model, features, max_length):
    """cs231n's sampling loop: re-run the model on the words so far, take the argmax of the last position."""
    words = torch.full((features.shape[0], 1), WORDS["<START>"])
    for _ in range(max_length):
        words = torch.cat([words, model(features, words)[:, -1].argmax(1, keepdim=True)], dim=1)
    return words[:, 1:]


def test_sample_is_greedy_and_pads_after_end():
    ours, ref = both_models(seed=4)
    with torch.no_grad():  # <END> is the likeliest first word of every image; make it so for about half of them
        ours.output.bias[WORDS["<END>"]] -= 0.062
    ref.load_state_dict(ours.state_dict())
    features = batch(N=16)[0] * 30  # larger features: the images' captions differ more
    ours.train()
    sampled = ours.sample(features, max_length=10)
    assert ours.training  # the mode is restored
    expected = reference_greedy(ref.eval(), features, 10)
    ended = torch.zeros(16, dtype=torch.bool)
    for t in range(10):
        column = torch.where(ended, torch.full_like(expected[:, t], WORDS["<NULL>"]), expected[:, t])
        assert torch.equal(sampled[:, t], column), t
        ended |= expected[:, t] == WORDS["<END>"]
    assert 0 < int(ended.sum()) < 16, "the test needs captions that end and captions that do not"


def test_cached_steps_give_the_full_models_scores():
    """Each step with cached keys and values scores the next word as the whole model run on the words so far."""
    ours, _ = both_models(seed=6)
    ours.double().eval()
    features, captions = batch(N=3, T=7)
    features = features.double()
    expected = ours(features, captions)  # (N, T, V)
    state = ours.initial_state(features)
    for t in range(captions.shape[1]):
        scores, state = ours.step(captions[:, t], state)
        torch.testing.assert_close(scores, expected[:, t], rtol=1e-12, atol=1e-12, msg=lambda m: f"step {t}: {m}")
    with pytest.raises(ValueError, match="at most max_length = 12 words"):
        for _ in range(6):
            _, state = ours.step(captions[:, 0], state)


def test_sample_without_cache_is_sample():
    ours, _ = both_models(seed=4)
    with torch.no_grad():
        ours.output.bias[WORDS["<END>"]] -= 0.062
    features = batch(N=16)[0] * 30
    assert torch.equal(ours.sample_without_cache(features, 10), ours.sample(features, 10))


def test_cached_attention_bad_inputs():
    query, heads = torch.randn(2, 1, 4), torch.randn(2, 2, 3, 2)
    weights = [torch.randn(4, 4), torch.randn(4), torch.randn(4, 4), torch.randn(4)]
    with pytest.raises(ValueError, match="keys and values must be \\(N, H, T, E / H\\)"):
        F.cached_attention(query, heads[:, :, :, :1], heads, *weights)
    with pytest.raises(ValueError, match="W_proj must have shape \\(4, 4\\)"):
        F.cached_attention(query, heads, heads, *weights[:2], torch.randn(4, 5), weights[3])
    with pytest.raises(ValueError, match="no backward: call it under torch.no_grad"):
        F.cached_attention(query.requires_grad_(), heads, heads, *weights)
    with pytest.raises(ValueError, match="num_heads=3 must divide the width 4 of x"):
        F.attention_heads(query, weights[0], weights[1], 3)


def test_sample_bad_inputs():
    model = CaptioningTransformer(WORDS, 6, 8, num_heads=2, max_length=5)
    with pytest.raises(ValueError, match="max_length=6 exceeds the model's max_length=5"):
        model.sample(torch.randn(2, 6), max_length=6)
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        model.sample(torch.randn(2, 6), max_length=0)
    no_end = CaptioningTransformer({"<NULL>": 0, "<START>": 1, "x": 2}, 6, 8, num_heads=2)
    with pytest.raises(ValueError, match="lacks <END>"):
        no_end.sample(torch.randn(2, 6))


# --------------------------------------------------------------------------- #
# Bad inputs and training
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CaptioningTransformer({"a": 0}, 6, 8), "must contain the padding token '<NULL>'"),
        (lambda: CaptioningTransformer({"<NULL>": 0, "a": 0}, 6, 8), "gives id 0 to both"),
        (lambda: CaptioningTransformer(WORDS, 6, 8, num_heads=3), "num_heads=3 must divide embed_dim=8"),
        (lambda: CaptioningTransformer(WORDS, 6, 7, num_heads=1), "embed_dim must be even"),
        (lambda: CaptioningTransformer(WORDS, 6, 8, num_layers=0), "num_layers must be a positive integer"),
        (lambda: CaptioningTransformer(WORDS, 0, 8), "input_dim must be a positive integer"),
        (lambda: MultiHeadAttention(8, 2, dropout=1.5), "dropout must be a probability"),
    ],
)
def test_construction_bad_inputs(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "features, captions, message",
    [
        (torch.randn(2, 5), torch.ones(2, 3, dtype=torch.long), "features have width 5 but the model expects"),
        (torch.randn(2, 6).double(), torch.ones(2, 3, dtype=torch.long), "features have dtype torch.float64"),
        (torch.randn(2, 6), torch.ones(3, 3, dtype=torch.long), "captions must be an \\(N, T\\) tensor with N = 2"),
        (torch.randn(2, 6), torch.ones(2, 7, dtype=torch.long), "T = 7 words; the model takes 1 to max_length = 5"),
        (torch.randn(2, 6), torch.full((2, 3), 8), "token id 8, outside the vocabulary"),
    ],
)
def test_forward_bad_inputs(features, captions, message):
    model = CaptioningTransformer(WORDS, 6, 8, num_heads=2, max_length=5)
    with pytest.raises(ValueError, match=message):
        model(features, captions)


def test_loss_needs_two_columns():
    model = CaptioningTransformer(WORDS, 6, 8, num_heads=2)
    with pytest.raises(ValueError, match="T\\+1 >= 2"):
        model.loss(torch.randn(2, 6), torch.ones(2, 1, dtype=torch.long))


def test_a_few_adam_steps_fit_a_small_batch():
    torch.manual_seed(0)
    model = CaptioningTransformer(WORDS, 6, 16, num_heads=2, num_layers=1, max_length=8)
    features, captions = batch(N=4, T=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model.loss(features, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0]


def test_embedding_and_linear_draw_as_torch_nn():
    from caption_torch.models.transformer_layers import Embedding, Linear

    torch.manual_seed(8)
    ours = [Embedding(5, 3, padding_idx=2), Linear(4, 6)]
    torch.manual_seed(8)
    ref = [nn.Embedding(5, 3, padding_idx=2), nn.Linear(4, 6)]
    for module, ref_module in zip(ours, ref):
        for (name, param), ref_param in zip(module.named_parameters(), ref_module.parameters()):
            assert torch.equal(param, ref_param), name


def test_bf16_autocast_trains_with_float32_gradients():
    assert_bf16_autocast_trains_with_float32_gradients(both_models()[0])


def assert_bf16_autocast_trains_with_float32_gradients(ours):
    """Under bf16 autocast the loss stays float32, near the float32 loss, and every gradient is finite float32."""
    features, captions = batch()
    torch.manual_seed(1)
    full = ours.loss(features, captions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)  # the same dropout masks
        mixed = ours.loss(features, captions)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, rtol=2e-2, atol=0)
    mixed.backward()
    for name, param in ours.named_parameters():
        assert param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all(), name
