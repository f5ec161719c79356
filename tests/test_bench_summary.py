"""benchmarks/summary.py: the median and range over runs that benchmarks/README.md reports."""

import json

import pytest

from benchmarks.summary import main, median_and_range, summarise

MACHINE = {"cpu": "test CPU", "cores": 2, "threads": 2}


def step_row(project_ms, native_ms, native_packed_ms):
    return {"row": "step", "device": "cpu", "precision": "fp32", "cell_type": "lstm", "batch": 25,
            "project_ms": project_ms, "native_ms": native_ms, "native_packed_ms": native_packed_ms,
            "speedup": min(native_ms, native_packed_ms) / project_ms}  # fmt: skip


def test_median_and_range_of_a_step_row_over_three_runs():
    # The faster native model differs between runs: padded in the first, packed in the others.
    runs = [{"machine": MACHINE, "rows": [step_row(p, n, k)]} for p, n, k in [(10, 20, 30), (20, 50, 30), (16, 40, 24)]]
    (line,) = summarise(runs)
    assert line["row"] == "step cpu fp32 lstm 25" and line["runs"] == "3"
    assert line["project_ms"] == "16.0 (10.0–20.0)"
    assert line["faster_native_ms"] == "24.0 (20.0–30.0)"
    assert line["speedup"] == "1.50 (1.50–2.00)"  # 30/20, 24/16, 20/10


def test_rows_without_a_ratio_are_left_out():
    skipped = {"row": "step", "device": "cuda", "skipped": "no GPU"}
    assert summarise([{"machine": MACHINE, "rows": [skipped, {"row": "check", "ok": True}]}]) == []


def test_median_and_range_digits():
    assert median_and_range([1.234, 1.0, 2.0]) == "1.23 (1.00–2.00)"
    assert median_and_range([100.04, 250.0]) == "175.0 (100.0–250.0)"


def test_runs_from_two_machines_are_refused(tmp_path, capsys):
    paths = []
    for index, cpu in enumerate(["cpu A", "cpu B"]):
        path = tmp_path / f"run{index}.json"
        path.write_text(json.dumps({"machine": {**MACHINE, "cpu": cpu}, "rows": [step_row(10, 20, 30)]}))
        paths.append(str(path))
    with pytest.raises(SystemExit) as exit_info:
        main(paths)
    assert exit_info.value.code == 2
    assert "different machines" in capsys.readouterr().err
