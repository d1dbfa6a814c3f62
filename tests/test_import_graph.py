"""The package's modules import each other without a cycle (lazy, in-function imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import babyllama

ROOT = Path(babyllama.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["babyllama", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: babyllama modules it imports anywhere in its file}; a package import counts as its __init__."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                for alias in node.names:  # `from babyllama.train import checkpoint` imports a module
                    deps.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in files and d != name and d != "babyllama"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "babyllama.train.loop" in graph and "babyllama.config" in graph["babyllama.train.loop"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _imports_any(graph: dict[str, set[str]], module: str, prefix: str) -> list[str]:
    return sorted(d for d in graph[module] if d == prefix or d.startswith(prefix + "."))


def test_layers_point_one_way():
    """Evaluation never imports training, the schema no evaluator, and the sweep runs pipelines, not loops."""
    graph = import_graph()
    for module in (m for m in graph if m.startswith("babyllama.evaluate")):
        assert not _imports_any(graph, module, "babyllama.train"), module
    assert not _imports_any(graph, "babyllama.config", "babyllama.evaluate")
    assert not _imports_any(graph, "babyllama.sweep", "babyllama.train")


HEAVY = ("torch", "transformers", "matplotlib")

NO_TORCH_PROBE = """
import sys
from babyllama.cli import main
from babyllama.config import load_config
from babyllama.evaluate.registry import jobs

for argv in (["--help"], ["config", sys.argv[1]]):
    try:
        main(argv)
    except SystemExit:
        pass
cfg = load_config(sys.argv[1], ["eval.reading=" + sys.argv[2]])
assert [job.file for _, job in jobs(cfg)] == ["perplexity.json", "blimp.json", "reading.json"]
print("HEAVY", sorted(m for m in %r if m in sys.modules))
"""


def test_help_config_and_the_evaluators_declarations_load_no_torch(tmp_path):
    """The quick commands and the readers of results stay quick: torch and transformers load where a model is."""
    import subprocess
    import sys

    root = Path(babyllama.__file__).parents[2]
    reading = tmp_path / "reading.csv"
    reading.write_text("x\n")
    done = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE % (HEAVY,), str(root / "configs" / "demo.yaml"),
                           str(reading)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"
