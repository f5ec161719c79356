"""CaptionConfig: the one home of defaults, its presets, and what reads it."""

import lightning as L
import pytest
import torch

import train
from caption_torch.models.config import PRESETS, CaptionConfig, preset, shape_fields
from caption_torch.models.registry import DECODERS
from caption_torch.training.system import CaptioningSystem

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3, "cat": 4}


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], PRESETS["full-lstm"]),
        (["--overfit", "50"], PRESETS["overfit-rnn"]),
        (["--overfit", "50", "--cell", "lstm"], PRESETS["overfit-lstm"]),
        (["--cell", "rnn", "--lr", "0.01"], CaptionConfig(decoder="rnn", lr=0.01)),
        (
            ["--overfit", "5", "--epochs", "3", "--hidden-dim", "64"],
            PRESETS["overfit-rnn"].updated(epochs=3, hidden_dim=64),
        ),
    ],
)
def test_train_flags_replace_fields_of_their_preset(flags, expected):
    args = train.resolve_defaults(train.build_parser().parse_args(flags))
    assert args.config == expected


def test_presets_are_the_notebooks_settings():
    overfit = PRESETS["overfit-rnn"]
    assert (overfit.decoder, overfit.batch_size, overfit.epochs, overfit.lr, overfit.lr_decay) == (
        "rnn", 25, 50, 5e-3, 0.95)  # fmt: skip
    assert (overfit.hidden_dim, overfit.wordvec_dim) == (512, 256)
    assert PRESETS["overfit-lstm"] == overfit.updated(decoder="lstm", lr_decay=0.995)
    assert preset(overfit=True, decoder="lstm") == PRESETS["overfit-lstm"]
    assert preset(overfit=False) == PRESETS["full-lstm"] == CaptionConfig()
    transformer = PRESETS["overfit-transformer"]  # the Transformer notebook's overfit run
    assert (transformer.wordvec_dim, transformer.num_heads, transformer.num_layers, transformer.max_length) == (
        256, 2, 2, 30)  # fmt: skip
    assert (transformer.batch_size, transformer.epochs, transformer.lr, transformer.lr_decay) == (25, 100, 1e-3, 1.0)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_every_decoder_has_a_full_and_an_overfit_preset(decoder):
    assert preset(overfit=False, decoder=decoder).decoder == decoder
    assert preset(overfit=True, decoder=decoder).decoder == decoder


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(decoder="gru"), "decoder must be one of"),
        (dict(hidden_dim=0), "hidden_dim must be a positive integer"),
        (dict(epochs=2.5), "epochs must be a positive integer"),
        (dict(batch_size=True), "batch_size must be a positive integer"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(lr_decay=1.5), r"lr_decay must be in \(0, 1\]"),
        (dict(decoder="transformer", num_heads=3), r"num_heads \(3\) must divide wordvec_dim \(256\)"),
        (dict(decoder="transformer", wordvec_dim=7, num_heads=7), r"wordvec_dim \(7\) must be even"),
    ],
)
def test_bad_fields_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        CaptionConfig(**change)


def test_system_takes_its_defaults_and_sizes_from_the_config():
    config = CaptionConfig(decoder="rnn", wordvec_dim=6, hidden_dim=8, lr=1e-3, lr_decay=0.5, max_length=7)
    system = CaptioningSystem.from_config(VOCAB, 4, config)
    assert system.config == config
    assert system.model.Wh.shape == (8, 8) and system.model.W_embed.shape == (5, 6)
    assert CaptioningSystem(VOCAB, 4).config == CaptionConfig()  # the defaults are the config's
    optimizer = system.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_a_checkpoint_reloads_with_weights_only(tmp_path):
    config = CaptionConfig(decoder="lstm", wordvec_dim=6, hidden_dim=8)
    system = CaptioningSystem.from_config(VOCAB, 4, config)
    path = tmp_path / "system.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
                "pytorch-lightning_version": L.__version__}, path)  # fmt: skip
    loaded = CaptioningSystem.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert loaded.config == config and loaded.model.word_to_idx == VOCAB
    for name, value in system.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    assert set(shape_fields("transformer")) | set(shape_fields("lstm")) <= set(loaded.hparams)


def test_help_shows_every_decoders_own_defaults():
    from caption_torch.cli.flags import build_parser

    text = " ".join(build_parser("").format_help().split())
    assert "--lr LR Adam learning rate (default: 0.005 [0.005]; transformer 0.001 [0.001])" in text
    assert "(default: 0.9 [0.95]; lstm 0.9 [0.995]; transformer 1 [1])" in text
    assert "captions per batch (default: 128 [25])" in text  # the same for every decoder: one pair
