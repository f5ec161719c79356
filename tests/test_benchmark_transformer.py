"""benchmarks/transformer.py at tiny sizes: the native copy computes the same model, and every row runs."""

import math

import torch

from benchmarks import transformer as bench

TINY = bench.TransformerShapes(input_dim=16, wordvec_dim=8, num_heads=2, num_layers=2, vocab_size=40)


def test_native_copy_computes_the_same_loss():
    assert bench.eval_loss_difference(TINY) < 1e-5


def test_native_copy_holds_the_project_weights():
    project, native = bench.make_pair(TINY)
    ours, theirs = project.transformer.layers[1].multihead_attn, native.transformer.layers[1].multihead_attn
    assert torch.equal(theirs.in_proj_weight[8:16], ours.key.weight)  # rows: query, key, value
    assert torch.equal(theirs.out_proj.bias, ours.proj.bias)


def test_rows_run_and_report_positive_times():
    rows = [bench.bench_training_step(3, TINY, rounds=2, warmup=0), *bench.bench_sampling(4, 3, TINY, 2, 0)]
    for row in rows:
        for key in ("ours_ms", "theirs_ms", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)


def test_memory_row_reports_both_peaks():
    row = bench.bench_memory(3, TINY)
    assert row["project_mib"] > 0 and row["native_mib"] > 0


def test_native_one_word_at_a_time_samples_the_project_captions():
    project, native = bench.make_pair(TINY)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)  # weights that make the captions differ between images
        for param in project.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))
    native = bench.NativeCaptioningTransformer.from_project(project, TINY)
    features, _ = bench.make_batch(6, TINY)
    with torch.no_grad():
        project.output.bias[project.end_id] = -math.inf  # no early end: every word is compared
        native.output.bias[project.end_id] = -math.inf
    sampled = native.sample(features, 5, project.start_id)
    assert torch.equal(sampled, project.sample(features, 5))
    assert len(set(map(tuple, sampled.tolist()))) > 1
