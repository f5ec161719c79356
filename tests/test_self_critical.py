"""Self-critical training's step: samples, CIDEr-D rewards, both baselines, and the direction of the update."""

import re

import numpy as np
import pytest
import torch

import caption_torch.functional as F
from caption_torch.metrics.cider import CiderD, Sentences
from caption_torch.models.recurrent import CaptioningRNN
from caption_torch.models.transformer import CaptioningTransformer
from caption_torch.training.self_critical import SelfCriticalSystem, self_critical_step, system_class
from caption_torch.training.system import CaptioningSystem

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "cat": 5, "dog": 6, "sat": 7}


def references_of(*captions):
    """(B, R, T) references: image b's captions, <START> ... <END> padded with <NULL>, -1 rows for none."""
    T = 2 + max(len(c) for refs in captions for c in refs)
    R = max(len(refs) for refs in captions)
    out = torch.full((len(captions), R, T), -1, dtype=torch.long)
    for b, refs in enumerate(captions):
        for r, words in enumerate(refs):
            ids = [1, *(VOCAB[w] for w in words.split()), 2]
            out[b, r] = torch.tensor(ids + [0] * (T - len(ids)))
    return out


def make_model(cell="lstm", seed=0):
    torch.manual_seed(seed)
    if cell == "transformer":
        model = CaptioningTransformer(VOCAB, input_dim=3, wordvec_dim=8, num_heads=2, num_layers=1, max_length=8)
        return model.double()
    return CaptioningRNN(VOCAB, input_dim=3, wordvec_dim=4, hidden_dim=6, cell_type=cell, dtype=torch.float64)


def corpus_reward(references):
    present = references[:, :, 0] >= 0
    sentences = Sentences.from_ids(references[present], 2, (1, 0))
    return CiderD(sentences, np.repeat(np.arange(len(references)), present.sum(1).numpy()), len(VOCAB))


def test_the_transformers_policy_loss_with_unit_weights_is_its_loss_times_t():
    """Its training loss is per word (divided by N * T); the policy loss is per caption (divided by N)."""
    model = make_model("transformer").eval()  # dropout off: both passes see the same network
    generated = torch.tensor([[4, 5, 7, 2, 0], [6, 2, 0, 0, 0], [4, 4, 4, 4, 4]])
    features = torch.randn(3, 3, dtype=torch.float64)
    captions = torch.cat([torch.ones(3, 1, dtype=torch.long), generated], 1)
    policy = model.policy_loss(features, generated, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(policy, model.loss(features, captions) * 5, rtol=1e-12, atol=0)


def test_the_transformers_packed_policy_loss_equals_the_whole_model_run():
    """Packed rows (each caption up to its last counted word) give the loss and gradients of every position run."""
    model = make_model("transformer").eval()
    generated = torch.tensor([[4, 5, 7, 2, 0], [6, 2, 0, 0, 0], [4, 4, 4, 4, 4], [2, 0, 0, 0, 0]])
    features = torch.randn(4, 3, dtype=torch.float64)
    weights = torch.tensor([0.7, -1.3, 0.2, 2.0], dtype=torch.float64)
    packed = model.policy_loss(features, generated, weights)
    captions = torch.cat([torch.ones(4, 1, dtype=torch.long), generated], 1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    whole = F.policy_gradient_loss(model._decode(features, captions[:, :-1]), model.output.weight.T,
                                   model.output.bias, captions[:, 1:], mask, weights)  # fmt: skip
    torch.testing.assert_close(packed, whole, rtol=1e-12, atol=1e-12)
    params = list(model.parameters())
    for ours, theirs in zip(torch.autograd.grad(packed, params), torch.autograd.grad(whole, params)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_the_step_scores_its_samples_with_the_dropouts_off_that_drew_them():
    """The Transformer has dropout: its samples come from the dropout-free model, and so must their
    log-probabilities. The loss then does not depend on torch's generator (which draws dropout masks)."""
    model = make_model("transformer", seed=4).train()
    corpus = references_of(["a cat sat"], ["a dog"], ["dog sat"])
    reward, references = corpus_reward(corpus), corpus[:2]
    features = torch.randn(2, 3, dtype=torch.float64)
    losses = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        sampling = torch.Generator().manual_seed(5)  # the same samples each time
        step = self_critical_step(model, reward, features, references, "mean", samples_per_image=4, max_length=6,
                                  generator=sampling)  # fmt: skip
        losses.append(step.loss)
    assert model.training  # the mode it came in with
    assert losses[0].item() != 0 and torch.equal(losses[0], losses[1])


def test_policy_loss_with_unit_weights_is_the_loss_of_the_same_captions():
    model = make_model()
    generated = torch.tensor([[4, 5, 7, 2, 0], [6, 2, 0, 0, 0], [4, 4, 4, 4, 4]])  # the last never ends
    features = torch.randn(3, 3, dtype=torch.float64)
    captions = torch.cat([torch.ones(3, 1, dtype=torch.long), generated], 1)
    torch.testing.assert_close(model.policy_loss(features, generated, torch.ones(3, dtype=torch.float64)),
                               model.loss(features, captions), rtol=1e-14, atol=0)  # fmt: skip
    # A <NULL> the model chose before <END> counts in the policy loss (the plain loss skips it as padding).
    chose_null = torch.tensor([[4, 0, 5, 2, 0]])
    weights = torch.ones(1, dtype=torch.float64)
    with_null = model.policy_loss(features[:1], chose_null, weights)
    without = model.policy_loss(features[:1], torch.tensor([[4, 5, 2, 0, 0]]), weights)
    assert with_null.item() != pytest.approx(without.item())


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_rewards_and_baselines(baseline):
    model = make_model()
    references = references_of(["a cat sat", "a cat"], ["a dog sat"])
    reward = corpus_reward(references)
    features = torch.randn(2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    step = self_critical_step(model, reward, features, references, baseline, samples_per_image=4, max_length=6)
    torch.manual_seed(1)  # the same samples again, rewarded by hand
    from caption_torch.models.decoding import temperature_sample

    samples = temperature_sample(model, features.repeat_interleave(4, 0), 1.0, 6)
    refs = Sentences.from_ids(references[references[:, :, 0] >= 0], 2, (1, 0))
    rewards = reward.scores(Sentences.from_ids(samples, 2, (1, 0)), np.repeat([0, 1], 4), refs, np.array([0, 0, 1]))
    assert step.reward == pytest.approx(rewards.mean(), abs=1e-12)
    if baseline == "mean":
        per_image = rewards.reshape(2, 4)
        others = np.array([[np.delete(row, k).mean() for k in range(4)] for row in per_image]).reshape(-1)
        np.testing.assert_allclose(step.advantages, rewards - others, rtol=0, atol=1e-12)
        assert np.ptp(rewards) > 0  # the samples differ, so a wrong leave-one-out would show
    else:
        greedy = Sentences.from_ids(model.sample(features, 6), 2, (1, 0))
        expected = reward.scores(greedy, np.arange(2), refs, np.array([0, 0, 1]))
        np.testing.assert_allclose(step.advantages, rewards - np.repeat(expected, 4), rtol=0, atol=1e-12)
        assert step.baseline == pytest.approx(expected.mean(), abs=1e-12)
    assert torch.isfinite(step.loss) and step.loss.requires_grad


@pytest.mark.parametrize("decoder", ["rnn", "transformer"])
@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_training_raises_the_reward(baseline, decoder):
    """Steps on one image raise its greedy caption's CIDEr-D; the mean baseline reaches the reference's own score.

    (The greedy baseline stalls once samples equal the greedy caption: their advantage is then zero.)
    """
    model = make_model(cell=decoder, seed=3)
    corpus = references_of(["a cat sat"], ["a dog"], ["dog sat"])  # document frequencies need several images
    reward, references = corpus_reward(corpus), corpus[:1]
    features = torch.randn(1, 3, dtype=torch.float64)
    refs = Sentences.from_ids(references[0, :1], 2, (1, 0))

    def greedy_reward():
        return reward.scores(Sentences.from_ids(model.sample(features, 6), 2, (1, 0)), [0], refs, [0])[0]

    before = greedy_reward()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1 if decoder == "rnn" else 0.005)
    torch.manual_seed(0)
    for _ in range(100 if decoder == "rnn" else 200):  # the Transformer's step is 20x smaller
        step = self_critical_step(model, reward, features, references, baseline, samples_per_image=8, max_length=6)
        optimizer.zero_grad()
        step.loss.backward()
        optimizer.step()
    best = reward.scores(refs, [0], refs, [0])[0]  # the reference itself: 7.5 (a 3-word caption has no 4-gram)
    after = greedy_reward()
    assert after > before + 1.5
    if baseline == "mean":
        assert after == pytest.approx(best)


@pytest.mark.parametrize("decoder", ["rnn", "transformer"])
@pytest.mark.parametrize("weights, shown", [(torch.ones(2), "(2,)"), (torch.ones(3, 5), "(3, 5)"), ([1.0] * 3, "list")])
def test_policy_loss_refuses_weights_that_are_not_one_per_caption(decoder, weights, shown):
    model = make_model(decoder)
    generated = torch.tensor([[4, 5, 7, 2, 0], [6, 2, 0, 0, 0], [4, 4, 4, 4, 4]])
    with pytest.raises(ValueError, match=re.escape(f"weights must be an (N,) tensor, one per caption, with N = 3; "
                                                   f"got {shown}")):  # fmt: skip
        model.policy_loss(torch.randn(3, 3, dtype=torch.float64), generated, weights)


def test_bad_settings_are_refused():
    model, references = make_model(), references_of(["a cat"])
    reward, features = corpus_reward(references), torch.randn(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="baseline must be one of"):
        self_critical_step(model, reward, features, references, "median", 4, 6)
    with pytest.raises(ValueError, match="mean baseline needs samples_per_image >= 2"):
        self_critical_step(model, reward, features, references, "mean", 1, 6)


SMALL = ["--hidden-dim", "32", "--wordvec-dim", "16", "--accelerator", "cpu", "--devices", "1"]


def test_self_critical_run_from_a_checkpoint_and_its_resume(coco_folder, tmp_path, capsys):
    """train.py: a cross-entropy epoch, one self-critical epoch from its weights, then --resume to a second."""
    import train

    def run(*flags):
        code = train.main([str(flag) for flag in flags])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out

    run("--data-dir", coco_folder, "--epochs", "1", "--batch-size", "20", *SMALL, "--log-dir", tmp_path / "xe")
    start = tmp_path / "xe" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    flags = ["--data-dir", coco_folder, "--self-critical", "greedy", "--samples-per-image", "3", "--batch-size", "4",
             "--accelerator", "cpu", "--devices", "1", "--log-dir", tmp_path / "sc"]  # fmt: skip
    out = run(*flags, "--epochs", "1", "--init-from", start)
    assert re.search(r"\(Iteration 1 / \d+\) loss: -?[\d.]+, reward: [\d.]+, baseline: [\d.]+", out), out
    assert re.search(r"CIDEr-D: [\d.]+", out) and "best-epoch=0-val_cider=" in out
    sc_last = tmp_path / "sc" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    from caption_torch.training.checkpointing import load_system

    stored = load_system(sc_last)
    assert isinstance(stored, SelfCriticalSystem) and stored.reward is None  # a reward is given to train, not stored
    assert stored.config.self_critical == "greedy" and stored.config.hidden_dim == 32  # the size came from --init-from
    out = run(*flags, "--epochs", "2", "--resume", sc_last)
    assert "(Iteration" in out
    newest = train.find_last_checkpoint(tmp_path / "sc")
    assert newest != sc_last and torch.load(newest, weights_only=True)["epoch"] == 1  # the second epoch ran


def test_self_critical_needs_a_starting_checkpoint(capsys):
    import train

    assert train.main(["--self-critical", "mean"]) == 2
    assert "give its checkpoint with --init-from" in capsys.readouterr().err


def test_the_step_under_bf16_autocast_is_close_to_float32():
    """bf16-mixed: the products in bf16, the loss in float32; the update direction is float32's."""
    corpus = references_of(["a cat sat"], ["a dog"], ["dog sat"])
    reward = corpus_reward(corpus)
    model = make_model(seed=2).float()
    features = torch.randn(3, 3)

    def gradient(autocast):
        torch.manual_seed(0)  # the same samples both times
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            step = self_critical_step(model, reward, features, corpus, "mean", samples_per_image=4, max_length=6)
        (grad,) = torch.autograd.grad(step.loss, [model.W_vocab])
        return grad

    full, mixed = gradient(False), gradient(True)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    cosine = torch.nn.functional.cosine_similarity(full.flatten(), mixed.flatten(), dim=0)
    assert cosine > 0.99


def test_the_system_trains_on_the_reward_it_was_given_without_a_datamodule(coco_folder):
    """SelfCriticalSystem owns its reward: Lightning runs it on bare image loaders (no trainer.datamodule)."""
    import lightning as L

    from caption_torch.data.datamodule import CaptionDataModule
    from caption_torch.data.sources import open_source
    from caption_torch.models.registry import CaptionConfig
    from caption_torch.training.self_critical import training_reward

    dm = CaptionDataModule(open_source(coco_folder), batch_size=4, train_on_images=SelfCriticalSystem.trains_on_images)
    dm.setup("fit")
    config = CaptionConfig.of(wordvec_dim=8, hidden_dim=16, self_critical="mean", samples_per_image=3, max_length=8)
    reward = training_reward(dm.train_captions, dm.word_to_idx, None)
    torch.manual_seed(0)
    system = SelfCriticalSystem(dm.word_to_idx, dm.feature_dim, config, reward=reward)
    before = {name: value.clone() for name, value in system.model.state_dict().items()}
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, **quiet)  # fmt: skip
    trainer.fit(system, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.val_dataloader())
    assert 0 <= trainer.callback_metrics["train_reward"] and "val_cider" in trainer.callback_metrics
    assert any(not torch.equal(value, before[name]) for name, value in system.model.state_dict().items())

    unrewarded = SelfCriticalSystem(dm.word_to_idx, dm.feature_dim, config)
    with pytest.raises(ValueError, match="build it with reward=training_reward"):
        L.Trainer(accelerator="cpu", devices=1, max_epochs=1, **quiet).fit(unrewarded, dm.train_dataloader())
    with pytest.raises(ValueError, match="self-critical training needs a baseline"):
        SelfCriticalSystem(dm.word_to_idx, dm.feature_dim, config.updated(self_critical=None), reward=reward)
    assert system_class(config) is SelfCriticalSystem and system_class(CaptionConfig()) is CaptioningSystem
    assert not CaptioningSystem.trains_on_images and (CaptioningSystem.monitor, system.monitor) == (
        "val_bleu4", "val_cider")  # fmt: skip
