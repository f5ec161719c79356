"""CaptioningRNN: parameters, gradcheck of the whole loss, sampling, bad input.

The notebooks' fixed-value losses are checks of caption_torch.check (tests/test_check.py).
"""

import pytest
import torch
from torch.autograd import gradcheck

from caption_torch import CaptioningRNN
from caption_torch.models.recurrent import PARAM_NAMES

TINY_VOCAB = {"<NULL>": 0, "cat": 2, "dog": 3}
VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "cat": 5, "dog": 6}


def test_params_have_assignment_names_shapes_and_init():
    torch.manual_seed(0)
    model = CaptioningRNN(VOCAB, input_dim=512, wordvec_dim=256, hidden_dim=128, cell_type="lstm")
    shapes = {name: tuple(p.shape) for name, p in model.params.items()}
    assert shapes == {
        "W_embed": (7, 256),
        "W_proj": (512, 128),
        "b_proj": (128,),
        "Wx": (256, 512),
        "Wh": (128, 512),
        "b": (512,),
        "W_vocab": (128, 7),
        "b_vocab": (7,),
    }
    assert set(model.params) == set(PARAM_NAMES)
    assert all(p is dict(model.named_parameters())[n] for n, p in model.params.items())
    assert model.b.abs().sum() == 0 and model.b_vocab.abs().sum() == 0
    # Standard deviations follow 1/100 and 1/sqrt(fan_in).
    assert abs(model.W_embed.std().item() - 0.01) < 0.003
    assert abs(model.W_proj.std().item() - 512**-0.5) < 0.003


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_gradcheck_whole_loss(cell_type):
    torch.manual_seed(231)
    N, T, D, W, H = 3, 5, 4, 5, 6
    model = CaptioningRNN(VOCAB, D, W, H, cell_type=cell_type, dtype=torch.float64)
    features = torch.randn(N, D, dtype=torch.float64)
    captions = torch.randint(len(VOCAB), (N, T))
    names = list(model.params)

    class Loss(torch.nn.Module):  # functional_call runs forward(): here the model's loss
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, features, captions):
            return self.model.loss(features, captions)

    def loss_of(*values):
        # functional_call swaps the parameters for `values`.
        return torch.func.functional_call(
            Loss(), {f"model.{n}": v for n, v in zip(names, values)}, (features, captions)
        )

    values = [p.detach().clone().requires_grad_() for p in model.params.values()]
    assert gradcheck(loss_of, values, eps=1e-6, atol=1e-6)


def _trained_to_say(model, words):
    """Bias the vocabulary so that greedy decoding follows `words` in order."""
    ids = [model.word_to_idx[w] for w in words]
    with torch.no_grad():
        model.W_vocab.zero_()
        model.b_vocab.fill_(-10)
        model.b_vocab[ids[0]] = 10  # constant prediction: every step emits ids[0]
    return ids


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_sample_shape_and_null_after_end(cell_type):
    torch.manual_seed(0)
    model = CaptioningRNN(VOCAB, 8, 6, 5, cell_type=cell_type)
    _trained_to_say(model, ["<END>"])
    captions = model.sample(torch.randn(4, 8), max_length=7)
    assert captions.shape == (4, 7) and captions.dtype == torch.long
    assert (captions[:, 0] == VOCAB["<END>"]).all()
    assert (captions[:, 1:] == VOCAB["<NULL>"]).all()


def test_sample_never_starts_with_start_and_runs_to_max_length():
    torch.manual_seed(0)
    model = CaptioningRNN(VOCAB, 8, 6, 5)
    _trained_to_say(model, ["cat"])
    captions = model.sample(torch.randn(3, 8), max_length=5)
    assert (captions == VOCAB["cat"]).all()


def test_sample_is_batched_consistently():
    torch.manual_seed(0)
    model = CaptioningRNN(VOCAB, 8, 6, 16, cell_type="lstm")
    features = torch.randn(5, 8)
    together = model.sample(features, max_length=6)
    one_by_one = torch.cat([model.sample(features[i : i + 1], max_length=6) for i in range(5)])
    assert torch.equal(together, one_by_one)


def test_sample_makes_no_graph():
    model = CaptioningRNN(VOCAB, 8, 6, 5)
    assert not model.sample(torch.randn(2, 8), 3).requires_grad


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cell_type="gru"), "cell_type must be one of"),
        (dict(word_to_idx={"a": 0}), "<NULL>"),
        (dict(word_to_idx={"<NULL>": 0, "<START>": 1, "a": 1}), "gives id 1 to both '<START>' and 'a'"),
        (dict(hidden_dim=0), "hidden_dim must be a positive integer"),
    ],
)
def test_constructor_errors(kwargs, message):
    args = dict(word_to_idx=VOCAB, input_dim=4, wordvec_dim=3, hidden_dim=5) | kwargs
    with pytest.raises(ValueError, match=message):
        CaptioningRNN(**args)


def test_loss_errors():
    model = CaptioningRNN(VOCAB, 4, 3, 5)
    captions = torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]])
    with pytest.raises(ValueError, match="width 7 but the model expects input_dim=4"):
        model.loss(torch.randn(2, 7), captions)
    with pytest.raises(ValueError, match="dtype torch.float64"):
        model.loss(torch.randn(2, 4, dtype=torch.float64), captions)
    with pytest.raises(ValueError, match="token id 99, outside the vocabulary"):
        model.loss(torch.randn(2, 4), captions.clone().fill_(99))
    with pytest.raises(ValueError, match="3 images"):
        model.loss(torch.randn(3, 4), captions)
    with pytest.raises(ValueError, match="T\\+1 >= 2"):
        model.loss(torch.randn(2, 4), captions[:, :1])
    with pytest.raises(ValueError, match="N = 0 sequences; the loss is divided by N"):
        model.loss(torch.randn(0, 4), captions[:0])


def test_sample_needs_start_and_end():
    model = CaptioningRNN(TINY_VOCAB, 4, 3, 5)
    with pytest.raises(ValueError, match="<START>, <END>"):
        model.sample(torch.randn(1, 4))


def reference_loss(model, features, captions):
    """The whole model in plain autograd ops, no custom Function (padding not skipped, no table)."""
    p = model.params
    captions_in, captions_out = captions[:, :-1], captions[:, 1:]
    h = features @ p["W_proj"] + p["b_proj"]
    c = torch.zeros_like(h)
    x = p["W_embed"][captions_in]
    outputs = []
    for t in range(captions_in.shape[1]):
        a = x[:, t] @ p["Wx"] + h @ p["Wh"] + p["b"]
        if model.cell_type == "rnn":
            h = torch.tanh(a)
        else:
            i, f, o, g = a.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    scores = torch.stack(outputs, 1) @ p["W_vocab"] + p["b_vocab"]
    nll = torch.nn.functional.cross_entropy(scores.transpose(1, 2), captions_out, reduction="none")
    return (nll * (captions_out != model.null_id)).sum() / captions.shape[0]


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
@pytest.mark.parametrize("batch", [1, 2, 9])  # N*T = 4 < V = 7 (per-position projection), 8 and 36 > V (table)
def test_loss_and_gradients_match_plain_autograd(cell_type, batch):
    """Sorting by length, skipping padding and the vocabulary table change nothing."""
    torch.manual_seed(batch)
    model = CaptioningRNN(VOCAB, 8, 6, 5, cell_type=cell_type, dtype=torch.float64)
    features = torch.randn(batch, 8, dtype=torch.float64)
    lengths = torch.randint(1, 5, (batch,))
    captions = torch.zeros(batch, 5, dtype=torch.long)
    for n, length in enumerate(lengths.tolist()):  # <START> words <END> <NULL>...
        captions[n, : length + 1] = torch.cat(
            [torch.tensor([1]), torch.randint(3, 7, (length - 1,)), torch.tensor([2])]
        )
    names = list(model.params)
    ours = torch.autograd.grad(model.loss(features, captions), list(model.params.values()))
    expected_loss = reference_loss(model, features, captions)
    expected = torch.autograd.grad(expected_loss, list(model.params.values()))
    torch.testing.assert_close(model.loss(features, captions), expected_loss, rtol=1e-12, atol=1e-12)
    for name, g, e in zip(names, ours, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_a_null_inside_a_caption_is_not_scored_but_the_words_after_it_are(cell_type):
    """The recurrence of each caption runs to its last scored word, past a <NULL> target before it."""
    torch.manual_seed(0)
    model = CaptioningRNN(VOCAB, 8, 6, 5, cell_type=cell_type, dtype=torch.float64)
    features = torch.randn(3, 8, dtype=torch.float64)
    captions = torch.tensor([[1, 4, 0, 0, 5, 2], [1, 6, 2, 0, 0, 0], [1, 0, 5, 2, 0, 0]])  # <NULL>s, then words
    ours = model.loss(features, captions)
    expected = reference_loss(model, features, captions)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(ours, list(model.params.values()))
    for name, got, want in zip(model.params, grads, torch.autograd.grad(expected, list(model.params.values()))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_step_with_the_input_table_equals_the_plain_step(cell_type):
    torch.manual_seed(0)
    model = CaptioningRNN(VOCAB, 8, 6, 5, cell_type=cell_type, dtype=torch.float64)
    state = model.initial_state(torch.randn(4, 8, dtype=torch.float64))
    words = torch.tensor([1, 4, 6, 2])
    plain_scores, plain_state = model.step(words, state)
    table_scores, table_state = model.step(words, state, model.input_table())
    torch.testing.assert_close(table_scores, plain_scores, rtol=1e-12, atol=1e-12)
    for got, expected in zip(table_state, plain_state):
        if expected is not None:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
