"""CaptionConfig: each field declared once (its default, help and check), the presets, and what reads them."""

import ast
import inspect

import lightning as L
import pytest
import torch

import train
from caption_torch.models import config as config_module
from caption_torch.models.config import UNSET, TrainingConfig
from caption_torch.models.registry import DECODERS, PRESETS, CaptionConfig, preset
from caption_torch.training.system import CaptioningSystem

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3, "cat": 4}


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], PRESETS["full-lstm"]),
        (["--overfit", "50"], PRESETS["overfit-rnn"]),
        (["--overfit", "50", "--cell", "lstm"], PRESETS["overfit-lstm"]),
        (["--cell", "rnn", "--lr", "0.01"], CaptionConfig.of(decoder="rnn", lr=0.01)),
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
        CaptionConfig.of(**change)


def test_system_takes_its_defaults_and_sizes_from_the_config():
    config = CaptionConfig.of(decoder="rnn", wordvec_dim=6, hidden_dim=8, lr=1e-3, lr_decay=0.5, max_length=7)
    system = CaptioningSystem(VOCAB, 4, config)
    assert system.config == config
    assert system.model.Wh.shape == (8, 8) and system.model.W_embed.shape == (5, 6)
    assert CaptioningSystem(VOCAB, 4).config == CaptionConfig()  # the defaults are the config's
    optimizer = system.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_a_checkpoint_reloads_with_weights_only(tmp_path):
    config = CaptionConfig.of(decoder="lstm", wordvec_dim=6, hidden_dim=8)
    system = CaptioningSystem(VOCAB, 4, config)
    path = tmp_path / "system.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
                "pytorch-lightning_version": L.__version__}, path)  # fmt: skip
    loaded = CaptioningSystem.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert loaded.config == config and loaded.model.word_to_idx == VOCAB
    for name, value in system.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    # Flat plain values: the vocabulary, the feature width and every field of the config, nothing else.
    assert dict(loaded.hparams) == {"word_to_idx": VOCAB, "input_dim": 4, **config.flat()}
    assert set(config.fixed_fields()) == {"decoder", "wordvec_dim", "hidden_dim"}


def test_help_shows_every_decoders_own_defaults():
    from caption_torch.cli.flags import build_parser

    text = " ".join(build_parser("").format_help().split())
    assert "--lr LR Adam learning rate (default: 0.005 [0.005]; transformer 0.001 [0.001])" in text
    assert "(default: 0.9 [0.95]; lstm 0.9 [0.995]; transformer 1 [1])" in text
    assert "captions per batch (default: 128 [25])" in text  # the same for every decoder: one pair


def main_format_checkpoint(path, decoder, **sizes):
    """A checkpoint as the CaptioningSystem of before the decoder configs wrote it: its 14 constructor
    arguments flat (every decoder's sizes, whatever the decoder), and the state dict of a model of those sizes."""
    hparams = dict(word_to_idx=VOCAB, input_dim=4, decoder=decoder, wordvec_dim=8, hidden_dim=512, num_heads=2,
                   num_layers=2, lr=5e-3, lr_decay=0.9, batch_size=128, epochs=12, max_length=30,
                   self_critical=None, samples_per_image=5) | sizes  # fmt: skip
    # A field added since (the Transformer's cs231n_version) was not written: its default builds those weights.
    fields = {name: hparams[name] for name in ("wordvec_dim", *DECODERS[decoder].config.names()) if name in hparams}
    model = DECODERS[decoder].config(**fields)
    torch.manual_seed(0)
    system = CaptioningSystem(VOCAB, 4, CaptionConfig(model, TrainingConfig(max_length=hparams["max_length"])))
    state = {name: value.clone() for name, value in system.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"}, path)
    return state


@pytest.mark.parametrize("decoder, sizes", [
    ("lstm", dict(hidden_dim=12)),
    ("rnn", dict(hidden_dim=6, lr=1e-3, self_critical="mean", samples_per_image=3)),
    ("transformer", dict(num_heads=4, num_layers=1, max_length=9)),
])  # fmt: skip
def test_a_checkpoint_written_before_the_decoder_configs_loads(tmp_path, capsys, decoder, sizes):
    from caption_torch.training.checkpointing import load_system
    from caption_torch.training.self_critical import system_class

    path = tmp_path / "old.ckpt"
    state = main_format_checkpoint(path, decoder, **sizes)
    assert type(load_system(path)) is system_class(CaptionConfig.from_flat({"decoder": decoder, **sizes}))
    for system in (load_system(path), CaptioningSystem.load_from_checkpoint(path, map_location="cpu",
                                                                              weights_only=True)):  # fmt: skip
        config = system.config
        assert config.decoder == decoder and config.wordvec_dim == 8
        for name, value in sizes.items():
            assert getattr(config, name) == value
        assert set(config.model.names()) == {"wordvec_dim", *DECODERS[decoder].config.names()}
        for name, value in state.items():
            assert torch.equal(system.state_dict()[name], value), name
    assert "carries no checksum" in capsys.readouterr().err  # written without one, as files before checksums


def test_none_is_a_value_and_unset_leaves_a_field():
    trained = CaptionConfig.of(self_critical="mean", samples_per_image=3)
    assert trained.updated(self_critical=None).self_critical is None  # back to cross-entropy, no replace() needed
    assert trained.updated(self_critical=UNSET, lr=UNSET) == trained
    assert trained.updated(lr=0.5).lr == 0.5 and trained.updated(lr=0.5).self_critical == "mean"


def test_each_decoder_owns_its_sizes_and_checks():
    assert CaptionConfig.of("transformer").model.names() == ("wordvec_dim", "num_heads", "num_layers", "cs231n_version")
    assert CaptionConfig.of("lstm").model.names() == ("wordvec_dim", "hidden_dim")
    with pytest.raises(ValueError, match=r"hidden_dim does not apply to the transformer decoder \(its sizes: "
                                         r"wordvec_dim, num_heads, num_layers, cs231n_version\)"):  # fmt: skip
        CaptionConfig.of("transformer", hidden_dim=64)
    with pytest.raises(AttributeError, match="the lstm decoder's config has no field 'num_heads'"):
        CaptionConfig().num_heads
    # Switching decoder keeps the sizes both have and takes the new one's defaults for the rest.
    switched = CaptionConfig.of("lstm", wordvec_dim=64, hidden_dim=32).updated(decoder="transformer")
    assert switched.model == DECODERS["transformer"].config(wordvec_dim=64)
    assert CaptionConfig.of("transformer").fixed_fields() == ("decoder", "wordvec_dim", "num_heads", "num_layers",
                                                              "cs231n_version", "max_length")  # fmt: skip


def test_config_module_imports_nothing_of_the_package_but_functional():
    """config.py sits just above functional (its positive-integer check): the registry, the models and the CLI
    read it, never the other way (no import cycle)."""
    tree = ast.parse(inspect.getsource(config_module))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    package = [name for name in imported if name.startswith("caption_torch")]
    assert imported and package in ([], ["caption_torch.functional"]), imported


def test_every_field_has_one_generated_flag_with_its_declared_help():
    from caption_torch.cli.flags import build_parser

    parser = build_parser("")
    by_dest = {action.dest: action for action in parser._actions}
    declared = [(TrainingConfig, name) for name in TrainingConfig.names()]
    declared += [(entry.config, name) for entry in DECODERS.values() for name in entry.config.names()]
    for owner, name in declared:
        action = by_dest[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.help.startswith(owner.field_help(name)[:20]) and action.default is UNSET
    text = " ".join(parser.format_help().split())
    assert "--num-heads NUM_HEADS Transformer attention heads (default: transformer 2 [2])" in text
    assert "--hidden-dim HIDDEN_DIM hidden state width H of the RNN/LSTM (default: 512 [512])" in text
