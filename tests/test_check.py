"""`python -m caption_torch.check`: every notebook line within its bound, and the command's output."""

import subprocess
import sys

import pytest

from caption_torch import check


@pytest.mark.parametrize("check_fn", check.ALL_CHECKS, ids=lambda f: getattr(f, "__name__", "lstm_gradients"))
def test_notebook_check_within_bound(check_fn):
    lines = list(check_fn())
    assert lines, "a check must produce at least one line"
    for line in lines:
        assert line.ok, line.format()


def test_out_of_bounds_line_is_reported():
    line = check.CheckLine("s", "dx error", 2e-3, 0.0, 1e-7)
    assert not line.ok and "OUT OF BOUNDS" in line.format()


def test_command_prints_notebook_lines_and_exits_zero():
    result = subprocess.run([sys.executable, "-m", "caption_torch.check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in [
        "next_h error:",
        "dprev_h error:",
        "dWh error:",
        "out error:",
        "dW error:",
        "loss:                   9.8323559100",
        "W_embed relative error:",
        "0 failed",
    ]:
        assert expected in result.stdout
