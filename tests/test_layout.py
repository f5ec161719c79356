"""The package's shape: sub-packages import only those below them, and the names users type keep working."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import caption_torch

PACKAGE = Path(caption_torch.__file__).parent

# Bottom to top: a unit may import only units listed before it (and itself). The entry points at the end
# are faces for users (``python -m caption_torch.evaluate``, cs231n's ``caption_torch.transformer``).
LEVELS = [
    {"vocabulary", "guard", "functional"},
    {"models"},
    {"metrics"},
    {"data"},
    {"features"},
    {"training"},
    {"evaluation"},
    {"cli"},
    {"evaluate", "check", "transformer", "prepare", "caption", "__init__", "__main__"},
]
LEVEL_OF = {unit: level for level, units in enumerate(LEVELS) for unit in units}


def unit_of(module: str) -> str:
    """``caption_torch.models.config`` -> ``models``; ``caption_torch.check`` -> ``check``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` that runs: an ``if TYPE_CHECKING:`` block only names types for annotations."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imported_modules(path: Path, module: str) -> set[str]:
    """Every ``caption_torch`` module that ``path`` imports when it runs (relative imports resolved), at any depth."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("caption_torch"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("caption_torch"):
                found.add(base if base != "caption_torch" else f"caption_torch.{node.names[0].name}")
    return found


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        modules[".".join(parts)] = path
    return modules


def test_every_unit_has_a_level():
    units = {unit_of(module) for module in package_modules()}
    assert units <= LEVEL_OF.keys(), f"place {sorted(units - LEVEL_OF.keys())} in LEVELS"


def test_no_unit_imports_one_above_it():
    upward = []
    for module, path in package_modules().items():
        here = unit_of(module)
        for target in imported_modules(path, module):
            there = unit_of(target)
            if LEVEL_OF[there] > LEVEL_OF[here]:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    modules = package_modules()
    graph = {module: {t for t in imported_modules(path, module) if t in modules} - {module}
             for module, path in modules.items()}  # fmt: skip
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path + [module, target]
            if target not in state and (cycle := visit(target, path + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_is_imported_from_another_module():
    """A leading underscore means "this module's own"; a package's ``_private.py`` module serves that package."""
    crossings = []
    for module, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("caption_torch"):
                source_package, _, source_name = node.module.rpartition(".")
                if source_name.startswith("_") and module.startswith(source_package + "."):
                    continue
                crossings += [f"{module} imports {node.module}.{alias.name}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]  # fmt: skip
    assert not crossings, "\n".join(crossings)


def test_every_module_imports():
    for info in pkgutil.walk_packages(caption_torch.__path__, "caption_torch."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


def test_the_names_users_type_still_work():
    from caption_torch import CaptioningRNN, CaptioningTransformer
    from caption_torch.transformer import (
        CaptioningTransformer as FromCs231nPath,
    )
    from caption_torch.transformer import MultiHeadAttention, PositionalEncoding, TransformerDecoderLayer

    assert FromCs231nPath is CaptioningTransformer
    assert CaptioningRNN.__module__ == "caption_torch.models.recurrent"
    assert MultiHeadAttention.__name__ == "MultiHeadAttention" and PositionalEncoding.__name__ == "PositionalEncoding"
    assert TransformerDecoderLayer.__module__ == "caption_torch.models.transformer_layers"
    import caption_torch.functional as F

    assert {"rnn_step", "lstm", "word_embedding", "temporal_softmax_loss"} <= set(F.__all__)


def test_module_entry_points_answer_help():
    for module in ("caption_torch.evaluate", "caption_torch.cli.train"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout
    result = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE.parent)  # fmt: skip
    assert result.returncode == 0 and "--model" in result.stdout, result.stderr
