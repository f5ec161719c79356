"""benchmarks/ at tiny sizes: every row function runs and returns sane numbers, in seconds."""

import json
import math
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench, native, rows
from benchmarks.native import max_loss_difference  # noqa: E402
from benchmarks.timing import peak_memory_bytes, time_interleaved

CPU = torch.device("cpu")
TINY = rows.Shapes(input_dim=16, wordvec_dim=8, hidden_dim=12, vocab_size=40, time_steps=16)
ONE_ROUND = rows.Rounds(rounds=2, warmup=1)


def _assert_positive_finite(row, keys):
    missing = set(keys) - set(row)
    assert not missing, f"row lacks {missing}: {row}"
    for key in keys:
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] > 0, (key, row[key])


def _png_size(path):
    """(width, height) in pixels from a PNG's header."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def _chart_height(bars):
    """plot_ratios' figure: 8 inches wide, 0.45 inch a bar plus 1.4 inches of frame, at 110 dpi."""
    return round((0.45 * bars + 1.4) * 110)


def test_captions_look_like_coco():
    captions = rows.coco_like_captions(2000, rows.Shapes(), torch.Generator().manual_seed(0))
    assert captions.shape == (2000, 17) and (captions[:, 0] == rows.START_ID).all()
    assert ((captions == rows.END_ID).sum(1) == 1).all()
    masked = (captions[:, 1:] == rows.NULL_ID).float().mean().item()
    assert 0.2 < masked < 0.35
    # Nothing but <NULL> after <END>.
    end_at = (captions == rows.END_ID).int().argmax(1)
    after_end = torch.arange(17) > end_at[:, None]
    assert (captions[after_end] == rows.NULL_ID).all()


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_native_copy_has_the_same_loss_and_gradients(cell_type):
    row = rows.check_equivalence(cell_type, CPU)
    assert row["ok"] and row["loss_difference"] <= 1e-10 and row["grad_difference"] <= 1e-10


def test_check_row_reports_a_native_copy_that_differs(monkeypatch):
    """The check row can fail: a native copy with one recurrent weight off by 1e-3 is out of bounds."""
    copy = native.NativeCaptioningRNN.from_project.__func__

    def off_by_a_little(cls, model, packed=False):
        copied = copy(cls, model, packed)
        with torch.no_grad():
            copied.recurrent.weight_hh_l0[0, 0] += 1e-3
        return copied

    monkeypatch.setattr(native.NativeCaptioningRNN, "from_project", classmethod(off_by_a_little))
    row = rows.check_equivalence("lstm", CPU)
    assert not row["ok"] and row["loss_difference"] > 1e-6 and row["grad_difference"] > 1e-6


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
@pytest.mark.parametrize("packed", [False, True])
def test_each_native_copy_matches_the_project(cell_type, packed):
    project, _ = rows.make_pair(cell_type, TINY, CPU, dtype=torch.float64, seed=3)
    features, captions = rows.make_batch(5, TINY, CPU, seed=3)
    captions[0, 1:] = rows.NULL_ID  # a caption with no word at all: packed to one ignored position
    loss_gap, grad_gap = max_loss_difference(project, features.double(), captions, packed)
    assert loss_gap <= 1e-10 and grad_gap <= 1e-10


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
def test_training_step_row(cell_type):
    row = rows.bench_training_step(cell_type, 4, TINY, CPU, ONE_ROUND)
    measured = ["project_ms", "native_ms", "native_packed_ms", "speedup", "project_captions_per_s", "masked_fraction"]
    _assert_positive_finite(row, measured)
    assert "errors" not in row
    faster = min(row["native_ms"], row["native_packed_ms"])
    assert row["speedup"] == faster / row["project_ms"]
    assert row["best_native"] == ("packed" if faster == row["native_packed_ms"] else "padded")
    # The counts describe the batch the row timed (make_batch's seed 0), counted here independently.
    _, captions = rows.make_batch(4, TINY, CPU)
    scored = sum(word != rows.NULL_ID for caption in captions[:, 1:].tolist() for word in caption)
    assert row["scored_tokens"] == scored and row["masked_fraction"] == pytest.approx(1 - scored / (4 * 16))
    assert row["distinct_input_words"] == len(set(captions[:, :-1].flatten().tolist()))
    for name in ("project", "native", "native_packed"):
        assert row[f"{name}_captions_per_s"] == pytest.approx(4 / (row[f"{name}_ms"] / 1e3))


def test_bf16_mixed_step_row_reports_rather_than_raises():
    # The CUDA bf16 path, exercised through CPU autocast: a contender that rejects it is reported.
    row = rows.bench_training_step("lstm", 4, TINY, CPU, ONE_ROUND, precision="bf16-mixed")
    _assert_positive_finite(row, ["native_ms", "project_ms", "speedup"])
    assert "errors" not in row  # the Functions run under bf16 autocast (see tests/test_mixed_precision.py)


def test_sampling_row():
    row = rows.bench_sampling("lstm", 10, 5, TINY, CPU, ONE_ROUND)
    _assert_positive_finite(row, ["project_captions_per_s", "native_captions_per_s", "speedup"])
    assert row["same_captions"] == 1.0  # same weights, same greedy decisions
    assert row["speedup"] == row["project_captions_per_s"] / row["native_captions_per_s"]
    project, _ = rows.make_pair("lstm", TINY, CPU)
    features, _ = rows.make_batch(10, TINY, CPU)
    words = [sum(word != rows.NULL_ID for word in caption) for caption in project.sample(features, 5).tolist()]
    assert row["mean_words"] == pytest.approx(sum(words) / 10)


def test_memory_row_and_profiler_peak():
    row = rows.bench_memory("rnn", 8, TINY, CPU)
    _assert_positive_finite(row, ["project_mib", "native_mib", "ratio"])
    assert row["ratio"] == row["native_mib"] / row["project_mib"]
    # A step allocates at least every parameter's gradient (zero_grad set them to None before it).
    project, _ = rows.make_pair("rnn", TINY, CPU)
    gradient_mib = sum(p.numel() * p.element_size() for p in project.parameters()) / 2**20
    assert row["project_mib"] >= gradient_mib and row["native_mib"] >= gradient_mib

    # A known allocation pattern: 4 MB kept + 8 MB transient -> the peak is 12 MB.
    def work():
        kept = torch.empty(1_000_000)
        transient = torch.empty(2_000_000)
        del transient
        return kept

    assert peak_memory_bytes(work, CPU) == 12_000_000


def test_flops_row():
    step_row = rows.bench_training_step("lstm", 4, TINY, CPU, ONE_ROUND)
    reference = rows.matmul_gflops(CPU, ONE_ROUND, m=64, k=32, n=48)
    row = rows.flops_row(step_row, TINY, reference)
    measured = [
        "useful_gflop",
        "project_gflops",
        "native_gflops",
        "native_executed_gflops",
        "project_executed_gflops",
        "matmul_gflops",
        "project_fraction",
        "native_fraction",
    ]
    _assert_positive_finite(row, measured + [f"{name}_gflops" for name in reference])
    # Counting by hand: 2 * feature projection + 3 * (input + recurrence + vocab) over K positions.
    N, D, W, H, V, K = 2, 16, 8, 12, 40, 20
    expected = 2 * (2 * N * D * H) + 3 * (2 * K * W * H + 2 * K * H * H + 2 * K * H * V)
    assert rows.training_step_flops("rnn", N, K, TINY) == expected
    lstm = 2 * (2 * N * D * H) + 3 * (2 * K * W * 4 * H + 2 * K * H * 4 * H + 2 * K * H * V)
    assert rows.training_step_flops("lstm", N, K, TINY) == lstm
    # The project projects each distinct input word once: U rows instead of K for the input projection.
    U = 7
    fewer = lstm - 3 * 2 * (K - U) * W * 4 * H
    assert rows.training_step_flops("lstm", N, K, TINY, projected_rows=U) == fewer
    batch, scored, words = step_row["batch"], step_row["scored_tokens"], step_row["distinct_input_words"]
    executed = rows.training_step_flops("lstm", batch, scored, TINY, projected_rows=words)
    assert row["project_executed_gflops"] == pytest.approx(executed / (step_row["project_ms"] / 1e3) / 1e9)
    assert row["project_executed_gflops"] <= row["project_gflops"]  # at most as many rows as positions


@pytest.mark.parametrize("asked, delivered", [(10, 3), (2, 2)])  # more batches than the loader has; fewer
def test_delivery_rate_counts_captions(monkeypatch, asked, delivered):
    """On a clock that only the loader moves: 2 s until the first batch, then 0.5 s per batch of 5 captions."""
    clock = [100.0]
    monkeypatch.setattr(rows.time, "perf_counter", lambda: clock[0])

    def loader():
        for index in range(4):
            clock[0] += 2.0 if index == 0 else 0.5
            yield torch.zeros(5, 16), torch.zeros(5, 17, dtype=torch.long), torch.zeros(5)

    rate, startup = rows.delivery_rate(loader(), batches=asked)
    assert startup == 2.0
    assert rate == pytest.approx(5 * delivered / (0.5 * delivered))  # 10 captions/s


def test_interleaved_timing_alternates_order():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 1, CPU)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert all(len(timing.samples) == 2 for timing in timings.values())


def test_command_line_quick_step_row(tmp_path):
    out, chart = tmp_path / "results.json", tmp_path / "ratios.png"
    args = ["--quick", "--rounds", "1", "--rows", "check,step", "--device", "cpu", "--json", out, "--plot", chart]
    bench.run(bench.parse_args([str(a) for a in args]), shapes=TINY)
    results = json.loads(out.read_text())
    assert {"cpu", "torch", "threads"} <= set(results["machine"])
    assert [row["row"] for row in results["rows"]] == ["check"] * 2 + ["step"] * 4
    checks = results["rows"][:2]
    assert [row["cell_type"] for row in checks] == ["rnn", "lstm"]
    assert all(row["ok"] and row["loss_difference"] <= 1e-10 and row["grad_difference"] <= 1e-10 for row in checks)
    steps = results["rows"][2:]
    assert [(row["cell_type"], row["batch"], row["precision"]) for row in steps] == [
        ("rnn", 25, "fp32"), ("rnn", 512, "fp32"), ("lstm", 25, "fp32"), ("lstm", 512, "fp32")
    ]  # fmt: skip
    assert _png_size(chart) == (880, _chart_height(len(steps)))  # one bar per step row


def test_ratio_chart_has_a_bar_per_ratio_row_and_refuses_none(tmp_path):
    from benchmarks.chart import plot_ratios, ratio_bars

    rows = [
        {"row": "check", "cell_type": "rnn", "ok": True},
        {"row": "step", "device": "cpu", "precision": "fp32", "cell_type": "lstm", "batch": 25, "speedup": 1.2},
        {"row": "step", "device": "cuda", "precision": "bf16-mixed", "cell_type": "lstm", "batch": 512,
         "errors": {"native": "RuntimeError"}},  # no ratio: no bar
        {"row": "sample", "device": "cpu", "cell_type": "rnn", "images": 1000, "speedup": 2.3},
        {"row": "memory", "device": "cpu", "cell_type": "lstm", "batch": 512, "ratio": 1.64},
        {"row": "data", "workers": 0, "ratio": 21.7},  # another kind of ratio: not on this chart
    ]  # fmt: skip
    assert ratio_bars(rows) == [
        ("LSTM training step, batch 25", 1.2),
        ("RNN greedy sampling, 1000 images", 2.3),
        ("LSTM peak memory, batch 512", 1.64),
    ]
    assert _png_size(plot_ratios(rows, tmp_path / "r.png", "test")) == (880, _chart_height(3))
    with pytest.raises(ValueError, match="no step, sample or memory row"):
        plot_ratios(rows[:1], tmp_path / "none.png", "test")


def test_data_row_on_a_tiny_synthetic_folder(tmp_path):
    synthetic = pytest.importorskip("caption_torch.data.synthetic.generate")
    pytest.importorskip("caption_torch.data.datamodule")
    data_dir = synthetic.write_synthetic_dataset(tmp_path / "tiny", size="tiny", seed=0)
    row = rows.bench_data_module(data_dir, num_workers=0, batch=16, batches=3, train_captions_per_s=100.0)
    _assert_positive_finite(row, ["captions_per_s", "startup_s", "train_captions_per_s", "ratio"])
    assert row["ratio"] == row["captions_per_s"] / 100.0 and (row["num_workers"], row["batch"]) == (0, 16)


def test_data_row_is_skipped_when_the_data_module_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "caption_torch.data.datamodule", None)  # makes the import raise ImportError
    data_rows = bench.run_data_rows(bench.parse_args(["--quick"]), train_captions_per_s=100.0)
    assert len(data_rows) == 1 and data_rows[0]["skipped"].startswith("data module not available")


# --------------------------------------------------------------------------- #
# Every entry point at tiny sizes, and every command line benchmarks/README.md gives
# --------------------------------------------------------------------------- #


def test_micro_quick_runs_its_groups_and_writes_json(tmp_path, capsys):
    from benchmarks import micro

    out = tmp_path / "micro.json"
    results = micro.run(["--quick", "--groups", "softmax,rng,unique,bleu", "--json", str(out)])
    printed = capsys.readouterr().out
    assert list(results) == ["softmax", "rng", "unique", "bleu"]
    for group in results:
        assert f"## {group}" in printed
    (unique,) = results["unique"]
    assert unique["title"].startswith("20,000 int64") and unique["ratio"] > 0
    assert "np.unique / sort + compare" in printed
    assert results["bleu"][0]["title"] == "bleu_scores 400 x 5" and "BLEU-1..4 of 400 images" in printed
    assert json.loads(out.read_text())["results"]["rng"][0]["title"] == "one draw from 4 options"


def test_micro_refuses_an_unknown_group(capsys):
    from benchmarks import micro

    with pytest.raises(SystemExit):
        micro.run(["--groups", "softmax,nonsense"])
    assert "--groups: unknown ['nonsense']" in capsys.readouterr().err


def test_self_critical_benchmark_times_every_part(tmp_path, monkeypatch, capsys):
    from benchmarks import self_critical

    monkeypatch.setenv("CAPTION_TORCH_CACHE", str(tmp_path))  # the tiny dataset and its document frequencies
    medians = self_critical.main(["--synthetic-size", "tiny", "--images", "3", "--samples", "2", "--max-length",
                                  "6", "--rounds", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert list(medians) == ["sample", "rewards", "greedy baseline", "loss + update"]
    assert all(seconds > 0 for seconds in medians.values())
    assert "3 images x 2 samples" in printed and "2 steps" in printed
    for part in [*medians, "whole step"]:
        assert part in printed


def test_versus_quick_compares_with_a_revision(capsys):
    from benchmarks import versus

    assert versus.main(["--against", "HEAD", "--quick", "--decoders", "lstm"]) == 0
    printed = capsys.readouterr().out
    assert "this checkout against HEAD, 1 rounds" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith("lstm")]
    assert [" ".join(row[:5]) for row in rows] == ["lstm training step, batch 2", "lstm training step, batch 5",
                                                   "lstm greedy sampling, 10 images"]  # fmt: skip
    assert all(row[-1] == "0.0e+00" for row in rows)  # the same losses and samples in both revisions
    metric_rows = [line.split() for line in printed.splitlines() if line.strip().startswith(("CIDEr-D", "BLEU"))]
    assert [" ".join(row[:-5]) for row in metric_rows] == [
        "CIDEr-D rewards of 250 samples", "BLEU-1..4 of 50 images x 5 references",
        "CIDEr-D of 50 images x 5 references",
    ]  # fmt: skip
    assert all(row[-1] == "0.0e+00" for row in metric_rows)  # the same scores


def test_extract_benchmark_pca_at_a_tiny_size(capsys):
    from benchmarks import extract

    extract.main(["pca", "--rows", "300", "--dim", "8"])
    assert re.match(r"PCA 300 x 4096 float32 -> 8, \d+ threads: median [\d.]+ s", capsys.readouterr().out)


def test_extract_benchmark_caption_one_round(capsys):
    from benchmarks import extract

    extract.main(["caption", "--rounds", "1"])
    printed = capsys.readouterr().out
    assert re.search(r"^caption of one image on cpu, \d+ threads, weights loaded: median [\d.]+ s", printed, re.M)


def test_transformer_benchmark_one_round(capsys):
    from benchmarks import transformer

    results = transformer.main(["--batches", "2", "--rounds", "1", "--warmup", "0"])
    printed = capsys.readouterr().out
    assert "eval loss |project - native|" in printed
    assert [row["row"] for row in results] == ["train step, batch 2"] and "train step, batch 2" in printed


def test_summary_of_two_quick_bench_runs(tmp_path, capsys):
    from benchmarks import summary

    for run in (1, 2):
        args = ["--quick", "--rounds", "1", "--rows", "step", "--device", "cpu", "--json", tmp_path / f"run{run}.json"]
        bench.run(bench.parse_args([str(a) for a in args]), shapes=TINY)
    capsys.readouterr()
    summary.main([str(tmp_path / "run1.json"), str(tmp_path / "run2.json")])
    printed = capsys.readouterr().out
    assert "runs: 2" in printed
    lines = [line for line in printed.splitlines() if line.startswith("| step cpu fp32")]
    assert [line.split("|")[1].strip() for line in lines] == [
        "step cpu fp32 rnn 25", "step cpu fp32 rnn 512", "step cpu fp32 lstm 25", "step cpu fp32 lstm 512"
    ]  # fmt: skip
    assert all(line.split("|")[2].strip() == "2" for line in lines)  # two runs each


README = Path(__file__).resolve().parent.parent / "benchmarks" / "README.md"


def _parser_of(script: str):
    """The argparse parser of a benchmark script, by its module name."""
    from benchmarks import extract, micro, self_critical, summary, transformer, versus

    parsers = {
        "bench": lambda: _ParseOnly(bench.parse_args),
        "extract": extract.build_parser,
        "micro": micro.build_parser,
        "self_critical": self_critical.build_parser,
        "summary": summary.build_parser,
        "transformer": lambda: _ParseOnly(transformer.parse_args),
        "versus": versus.build_parser,
    }
    return parsers[script]()


class _ParseOnly:
    """A parse_args(argv) function with a parser's face."""

    def __init__(self, parse):
        self.parse_args = parse


def readme_commands() -> list[list[str]]:
    """Every benchmark command benchmarks/README.md quotes, in code blocks or inline, as its arguments after the
    script: ``["micro", "--threads", "1"]``."""
    text = README.read_text()
    fenced = re.findall(r"```\w*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [line for block in fenced for line in block.splitlines()] + [" ".join(span.split()) for span in inline]
    commands = []
    for line in lines:
        for part in line.split("#")[0].split(";"):  # comments off; `for ...; do python ...; done` into its parts
            words = shlex.split(part)
            if "python" not in words:
                continue
            words = words[words.index("python") + 1 :]  # after any `VAR=value` or `do`
            if words[:1] == ["-m"] and words[1].startswith("benchmarks."):
                commands.append([words[1].removeprefix("benchmarks."), *words[2:]])
            elif words and words[0].startswith("benchmarks/") and words[0].endswith(".py"):
                commands.append([words[0].removeprefix("benchmarks/").removesuffix(".py"), *words[1:]])
    return commands


def test_the_readme_quotes_every_entry_point():
    scripts = {command[0] for command in readme_commands()}
    assert scripts == {"bench", "extract", "micro", "self_critical", "summary", "transformer", "versus"}


@pytest.mark.parametrize("command", readme_commands(), ids=" ".join)
def test_every_command_line_in_the_readme_parses(command):
    from benchmarks import micro

    script, *arguments = command
    args = _parser_of(script).parse_args(arguments)  # a flag it does not take exits with status 2
    if script == "micro":  # the lists the scripts check themselves after parsing
        assert set(args.groups.split(",")) <= set(micro.GROUPS)
    if script == "bench":
        assert set(args.rows.split(",")) <= set(bench.ROWS)
