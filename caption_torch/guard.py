"""The last line of defence of every command: an unexpected exception becomes one ``error:`` line and a report.

Bad input is refused where it is read, in one ``error:`` line with exit code 2 (the schemas of
``data/schema.py`` and ``training/checkpoint_schema.py``, the flags' types). What still escapes
is a bug, or the machine failing: :func:`entry_point` catches it, writes the traceback to a
report file, and prints one line naming the step that failed and the report, with exit code 1.
An allocation failure is the machine's limit, not a bug: it is one ``error:`` line, exit code 2.
``--debug`` (or ``CAPTION_TORCH_DEBUG=1``) lets the traceback through instead.

A leaf module: it imports nothing of the project, so every entry point can use it.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "CAPTION_TORCH_DEBUG"
PACKAGE = "caption_torch"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure (host or device), whichever type raised it."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and any(
        words in message for words in ("can't allocate memory", "out of memory", "DefaultCPUAllocator")
    )


def failed_step(error: BaseException) -> str:
    """Where it failed: the chain of the project's functions from the command down to the failure."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if f"{os.sep}{PACKAGE}{os.sep}" in
              frame.filename or Path(frame.filename).name == "train.py"]  # fmt: skip
    names = [frame.name for frame in frames if frame.name not in ("guarded", "<module>")]
    if not names:
        return "outside caption_torch"
    where = frames[-1]
    chain = " > ".join(names if len(names) <= 5 else [*names[:2], "...", *names[-2:]])
    return f"{chain} ({Path(where.filename).name}:{where.lineno})"


def write_report(error: BaseException, command: str, argv: Sequence[str], folder: Path | None) -> Path:
    """The traceback, the command line and the versions, in a new file in ``folder`` (else the temp dir)."""
    text = "".join(traceback.format_exception(error))
    header = f"command: {command} {' '.join(argv)}\npython: {sys.version.split()[0]}\n"
    try:
        import torch

        header += f"torch: {torch.__version__}\n"
    except Exception:  # the report must not fail on what it reports
        pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for place in ([folder] if folder is not None else []) + [Path(tempfile.gettempdir())]:
        try:
            place.mkdir(parents=True, exist_ok=True)
            path = place / f"caption-torch-error-{stamp}-{os.getpid()}.txt"
            path.write_text(header + "\n" + text, encoding="utf-8")
            return path
        except OSError:
            continue
    return Path("(no report: no writable folder)")


def entry_point(command: str, report_folder: Callable[[Sequence[str]], Path | None] = lambda argv: None):
    """Decorate a command's ``main(argv)`` (or ``main()``) with the net described in the module docstring.

    Args:
        command: the command's name in messages (``train.py``).
        report_folder: the folder for the report, from the command line (the run's log folder).
    """

    def decorate(main: Callable) -> Callable:
        takes_argv = bool(inspect.signature(main).parameters)

        @functools.wraps(main)
        def guarded(argv: Sequence[str] | None = None):
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
            argv = [arg for arg in argv if arg != DEBUG_FLAG]
            try:
                return main(argv) if takes_argv else main()
            except (SystemExit, KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as error:
                if debug:
                    raise
                if is_out_of_memory(error):
                    reason = " ".join(str(error).split())[:200] or "host RAM"
                    print(f"error: {command}: out of memory in {failed_step(error)} ({reason}); "
                          "lower --batch-size or the model's sizes", file=sys.stderr)  # fmt: skip
                    return 2
                try:
                    folder = report_folder(argv)
                except Exception:
                    folder = None
                report = write_report(error, command, argv, folder)
                reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
                debug_hint = f"run with {DEBUG_FLAG} or {DEBUG_VARIABLE}=1 to see the traceback"
                print(f"error: {command} failed unexpectedly in {failed_step(error)}: {reason}; full report in "
                      f"{report} ({debug_hint})", file=sys.stderr)  # fmt: skip
                return 1

        return guarded

    return decorate


def option_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line (``--flag V`` or ``--flag=V``), or None."""
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None
