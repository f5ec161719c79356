"""`python -m caption_torch.check`: every notebook line within its bound, and the command's output.

Every check runs once, in this process; the command's printing and exit status are tested on
those lines, and one subprocess with a single cheap check tests the status a shell sees.
"""

import subprocess
import sys

import pytest

from caption_torch import check

CHECK_NAMES = [getattr(check_fn, "__name__", "lstm_gradients") for check_fn in check.ALL_CHECKS]


@pytest.fixture(scope="module")
def lines_by_check():
    """Each check's lines, computed on first use: the tests below share one run of every check."""
    cache = {}

    def lines(index):
        if index not in cache:
            cache[index] = list(check.ALL_CHECKS[index]())
        return cache[index]

    return lines


@pytest.mark.parametrize("index", range(len(check.ALL_CHECKS)), ids=CHECK_NAMES)
def test_notebook_check_within_bound(lines_by_check, index):
    lines = lines_by_check(index)
    assert lines, "a check must produce at least one line"
    for line in lines:
        assert line.ok, line.format()


def test_out_of_bounds_line_is_reported():
    line = check.CheckLine("s", "dx error", 2e-3, 0.0, 1e-7)
    assert not line.ok and "OUT OF BOUNDS" in line.format()


def test_command_prints_notebook_lines_and_exits_zero(lines_by_check, monkeypatch, capsys):
    every_line = [line for index in range(len(check.ALL_CHECKS)) for line in lines_by_check(index)]
    monkeypatch.setattr(check, "run_all", lambda: every_line)
    assert check.main() == 0
    out = capsys.readouterr().out
    for expected in [
        "next_h error:",
        "dprev_h error:",
        "dWh error:",
        "out error:",
        "dW error:",
        "loss:                   9.8323559100",
        "W_embed relative error:",
        f"{len(every_line)} passed, 0 failed",
    ]:
        assert expected in out
    sections = list(dict.fromkeys(line.section for line in every_line))
    assert [text for text in out.splitlines() if text in sections] == sections  # each section's title, once


def test_command_exits_one_when_a_line_is_out_of_bounds(monkeypatch, capsys):
    bad = check.CheckLine("Vanilla RNN: forward", "h error", 2e-3, 0.0, 1e-6)
    monkeypatch.setattr(check, "run_all", lambda: [bad])
    assert check.main() == 1
    assert "OUT OF BOUNDS" in capsys.readouterr().out


def test_command_exit_status_reaches_the_shell():
    # One real check and one line out of bounds: main()'s status must become the process's.
    script = (
        "import sys; from caption_torch import check; "
        "check.ALL_CHECKS = (check.check_rnn_step_forward, lambda: [check.CheckLine('s', 'x error', 1.0, 0.0, 0.5)]); "
        "sys.exit(check.main())"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "next_h error:" in result.stdout and "OUT OF BOUNDS" in result.stdout
    assert "1 passed, 1 failed" in result.stdout
