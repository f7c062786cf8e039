"""The package's shape, checked on every run (docs/ARCHITECTURE.md):

- the layers, lowest first: model, adapters, observe, policy, act, publish, runtime, cli;
  a module imports nothing from a layer above its own (TYPE_CHECKING and function-local
  imports included);
- the pure layers (model, policy) import no adapter;
- only the adapters import the OS-facing libraries (docker, psutil, pyroute2, sqlite3,
  systemd) or name a /proc or /sys path;
- no import cycle between modules;
- no module over 600 lines, no class over 300.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "supervisor"
LAYERS = ["model", "adapters", "observe", "policy", "act", "publish", "runtime", "cli"]
PURE = {"model", "policy"}
OS_LIBS = {"docker", "psutil", "pyroute2", "sqlite3", "systemd", "requests"}
MAX_MODULE_LINES, MAX_CLASS_LINES = 600, 300


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


MODULES = _modules()


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def _imports(path: Path) -> list[str]:
    """Every module named by an import statement anywhere in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (the package uses absolute ones)"
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in MODULES]
    return out


def _internal(mod_path: Path) -> set[str]:
    return {m for m in _imports(mod_path) if m in MODULES}


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if _layer(m) is None
             and m not in ("supervisor", "supervisor.__main__")]
    assert loose == [], f"modules outside the layer folders: {loose}"


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if _layer(m)))
def test_no_import_from_a_higher_layer(mod):
    own = LAYERS.index(_layer(mod))
    upward = [m for m in _internal(MODULES[mod])
              if _layer(m) and LAYERS.index(_layer(m)) > own]
    assert upward == [], f"{mod} ({LAYERS[own]}) imports from above: {upward}"


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if _layer(m) in PURE))
def test_pure_layers_import_no_adapter(mod):
    bad = [m for m in _internal(MODULES[mod]) if _layer(m) == "adapters"]
    assert bad == [], f"{mod} is pure but imports adapters: {bad}"


def _names_os_path(path: Path) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value
            if v in ("/proc", "/sys") or v.startswith(("/proc/", "/sys/")):
                hits.append(v)
    return hits


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if _layer(m) != "adapters"))
def test_only_adapters_touch_the_os(mod):
    path = MODULES[mod]
    libs = sorted({m.split(".")[0] for m in _imports(path)} & OS_LIBS)
    assert libs == [], f"{mod} imports OS-facing libraries {libs}: that is the adapters' job"
    # The config names the default roots (docker.proc_root, docker.cgroup_root), which
    # the adapters are then given; nobody else names a /proc or /sys path.
    if mod != "supervisor.model.config":
        assert _names_os_path(path) == [], f"{mod} names /proc or /sys paths"


def test_no_import_cycle():
    graph = {m: _internal(p) - {m} for m, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_module_and_class_sizes():
    big = []
    for mod, path in MODULES.items():
        src = path.read_text(encoding="utf-8")
        lines = src.count("\n") + 1
        if lines > MAX_MODULE_LINES:
            big.append(f"{mod}: {lines} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    big.append(f"{mod}.{node.name}: {size} lines")
    assert big == [], "over the size limits: " + "; ".join(big)


def test_the_check_sees_a_violation(tmp_path):
    """The walk itself works: a module importing upward is caught."""
    bad = tmp_path / "m.py"
    bad.write_text("from supervisor.runtime.daemon import Daemon\nimport psutil\n"
                   "X = '/proc/meminfo'\n")
    assert "supervisor.runtime.daemon" in _internal(bad)
    assert "psutil" in {m.split('.')[0] for m in _imports(bad)}
    assert _names_os_path(bad) == ["/proc/meminfo"]
