"""The package's layers: every import points down (or sideways within a layer), text/ and lm/ stay apart."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "sapo_lightning"

#: Lowest first. A module may import modules of its own layer or below, never above.
LAYERS = [
    # config errors, seed streams, the types the loop passes around, file modes
    {"checks", "seeds", "rollout", "files"},
    {"advantages", "objectives", "rollout_correction", "tasks", "policies", "transformer", "lora", "pretrained",
     "data"},  # the algorithm
    {"loop"},  # the loop's internals
    {"module", "callbacks"},  # the LightningModule and the callbacks it needs
    {"text", "lm", "envs"},  # plug-ins that configs name: text tasks, causal-LM policies, environments
    {"cli", "commands", "export", "compare", "hf", "__init__", "__main__"},  # commands and entry points
]


def unit(module: str) -> str:
    """The layer unit of ``sapo_lightning.a.b``: ``a`` (a subpackage or a top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each package module's name -> the package modules it imports (at any depth of its code)."""
    graph = {}
    for path in package.rglob("*.py"):
        relative = path.relative_to(package.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t.startswith("sapo_lightning.") and t != name}
    return graph


def layer(name: str) -> int:
    (index,) = [i for i, units in enumerate(LAYERS) if unit(name) in units] or [None]
    assert index is not None, f"{name} has no layer in tests/test_layers.py: place it"
    return index


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, targets in graph.items() for b in targets if b in graph and layer(b) > layer(a)]


def test_every_import_points_down_or_sideways():
    assert upward(imports()) == []


def test_text_and_lm_never_import_each_other_and_the_core_imports_neither():
    graph = imports()
    crossing = [(a, b) for a, targets in graph.items() for b in targets
                if {unit(a), unit(b)} == {"text", "lm"} or (layer(a) < 4 and unit(b) in {"text", "lm", "envs"})]
    assert crossing == []


def test_the_import_graph_has_no_cycle():
    found = imports()
    graph = {a: {b for b in targets if b in found} for a, targets in found.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for start in sorted(graph) if start not in state and (c := visit(start, []))]
    assert cycles == []


def test_a_planted_upward_import_is_found(tmp_path):
    """The check itself can fail: the package copied, with its objectives importing a text task."""
    copy = tmp_path / "sapo_lightning"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "objectives.py").open("a") as f:
        f.write("\nfrom sapo_lightning.text import task\n")
    assert ("sapo_lightning.objectives", "sapo_lightning.text.task") in upward(imports(copy))
