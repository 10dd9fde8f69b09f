"""The shape of the code: strict layers with no cycles, short functions, task names only where tasks live.

The layers are docs/architecture.md's, top to bottom. A module may import from its own layer or any
layer below it, never above, and the graph of modules (and of packages) has no cycle. Imports inside
functions count, and so do the task registry's by-name imports ("trainlab.tasks.sft:SFT"); imports
under `if TYPE_CHECKING:` do not (they only name types).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"
FIXTURES = Path(__file__).parent / "fixtures"

# top to bottom; a module belongs to the first entry that is a prefix of its dotted name
LAYERS = [
    ("cli", ["trainlab.cli", "trainlab.__main__"]),
    ("experiment", ["trainlab.experiment"]),
    ("doctor", ["trainlab.doctor"]),
    ("inference and export", ["trainlab.inference", "trainlab.export", "trainlab.forecast"]),
    ("train", ["trainlab.train"]),
    ("presets and the run directory", ["trainlab.presets", "trainlab.rundir"]),
    ("tasks", ["trainlab.tasks"]),
    ("models and data", ["trainlab.models", "trainlab.data"]),
    ("config", ["trainlab.config"]),
    ("leaves", ["trainlab.errors", "trainlab.files", "trainlab.monitor", "trainlab.hardware", "trainlab.stats",
                "trainlab.findings", "trainlab.charts", "trainlab"]),
]
TASK_NAMES = ("causal_lm", "sft", "masked_lm", "series_tokenizer", "series_forecast")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return len(LAYERS) - rank  # higher number, higher layer
    raise AssertionError(f"module {module} is in no layer: add it to LAYERS and docs/architecture.md")


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every trainlab import, resolved to the most specific module."""

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                by_name = re.fullmatch(r"(trainlab(?:\.\w+)+):\w+", node.value)  # the registry's "module:Class"
                targets = [by_name.group(1)] if by_name else []
            for target in targets:
                if target.startswith("trainlab"):
                    resolved = resolve(target)
                    if resolved and resolved != module:
                        edges.append((module, resolved, node.lineno))
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_module_imports_a_layer_above_its_own():
    mods = modules()
    upward = [f"{SRC.parent / mods[a].relative_to(SRC.parent)}:{line}: {a} ({LAYERS[len(LAYERS) - layer_of(a)][0]}) "
              f"imports {b} ({LAYERS[len(LAYERS) - layer_of(b)][0]})"
              for a, b, line in imports(mods) if layer_of(b) > layer_of(a)]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_cycle_among_modules_or_packages():
    edges = imports(modules())
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    assert not (cycle := find_cycle(graph)), "import cycle: " + " -> ".join(cycle)

    def package(m: str) -> str:
        return ".".join(m.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for a, b, _ in edges:
        if package(a) != package(b):
            packages.setdefault(package(a), set()).add(package(b))
    assert not (cycle := find_cycle(packages)), "package import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_forbid():
    """The graph checks are not vacuous: an upward edge and a cycle are found when they exist."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    assert layer_of("trainlab.train.trainer") > layer_of("trainlab.tasks.sft") > layer_of("trainlab.config")
    edges = imports(modules())
    assert ("trainlab.tasks", "trainlab.tasks.sft") in {(a, b) for a, b, _ in edges}  # by name, from the registry
    assert ("trainlab.train.trainer", "trainlab.hardware") in {(a, b) for a, b, _ in edges}


def test_no_function_is_over_60_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "\n".join(long)


def test_task_names_are_spelled_only_in_tasks_and_presets():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "tasks" or rel.name == "presets.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in TASK_NAMES:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "task names outside tasks/ and presets.py:\n" + "\n".join(found)


def test_tiny_is_unchanged_field_for_field():
    """`tiny` is the tests' baseline: derived from the neutral base, it must not drift with the demo."""
    from trainlab.presets import tiny

    expected = json.loads((FIXTURES / "tiny_config.json").read_text())
    assert tiny().to_dict() == expected


@pytest.mark.parametrize("name", ["shakespeare-char", "kronos-btc", "micro-bert", "shakespeare-sft"])
def test_every_task_section_is_in_every_config(name):
    """A config names every registered task's section (so `--set sft.end=...` works on any preset), and
    the task is checked against the registry with one line naming the known tasks."""
    from trainlab.errors import ConfigError
    from trainlab.presets import resolve
    from trainlab.tasks import TASKS, task_class

    cfg = resolve(name)
    for task in TASKS:
        for key in task_class(task).sections:
            assert hasattr(cfg, key)
    with pytest.raises(ConfigError, match="known tasks: " + ", ".join(TASKS)):
        resolve(name, overrides=["task=translation"])
