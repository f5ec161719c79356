"""benchmarks/versus.py: another revision's package imported beside this one, holding the same weights."""

import torch

from benchmarks import versus
from benchmarks.rows import Shapes, make_batch


def test_the_other_revision_is_a_separate_package_with_the_same_model(tmp_path):
    other = versus.import_revision("HEAD", tmp_path)
    assert other.__name__ == versus.OTHER_PACKAGE and other.CaptioningRNN is not versus.CaptioningRNN
    shapes = Shapes(input_dim=6, wordvec_dim=4, hidden_dim=5, vocab_size=12, time_steps=5)
    ours, theirs = versus.make_models(other, "lstm", shapes)
    features, captions = make_batch(3, shapes, torch.device("cpu"))
    assert torch.equal(ours.loss(features, captions), theirs.loss(features, captions))
    ours.Wh.data.add_(1.0)  # the weights are copies, not shared: the losses now differ
    assert not torch.equal(ours.loss(features, captions), theirs.loss(features, captions))


def test_the_transformers_of_both_revisions_hold_the_same_weights(tmp_path):
    other = versus.import_revision("HEAD", tmp_path)
    shapes = Shapes(input_dim=6, wordvec_dim=4, hidden_dim=5, vocab_size=12, time_steps=5)
    ours, theirs = versus.make_models(other, "transformer", shapes)
    assert type(theirs).__module__.startswith(f"{versus.OTHER_PACKAGE}.")  # its own class, not this checkout's
    features, captions = make_batch(3, shapes, torch.device("cpu"))
    ours.eval(), theirs.eval()  # dropout off: the same weights give the same loss
    assert torch.equal(ours.loss(features, captions), theirs.loss(features, captions))
