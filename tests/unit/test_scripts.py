"""The Python scripts under scripts/ (benchmarks, the soak, the lab's runner) are run by
hand, not by CI: a helper they import from the project or the tests that has moved or
been renamed would break them unseen. Each name they import from a module of this
repository must exist there."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (ROOT / "scripts").iterdir()
                 if p.is_file() and p.read_bytes().startswith(b"#!/usr/bin/env python"))


def _local(module: str) -> bool:
    """A module of this repository (the package, the lab, the tests' helpers)."""
    top = module.split(".")[0]
    return any((base / top).is_dir() or (base / f"{top}.py").is_file()
               for base in (ROOT, ROOT / "tests"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.module, [a.name for a in node.names]) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            and _local(node.module)]


def test_there_are_scripts_to_check():
    assert {"soak", "bench_scrape", "bench_sampler", "lab-run"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_imports_only_names_that_exist(script, monkeypatch):
    for base in (ROOT, ROOT / "tests"):
        monkeypatch.syspath_prepend(str(base))
    missing = []
    for module, names in _imports(script):
        mod = importlib.import_module(module)
        for name in names:
            # a submodule (`from lab import report`) need not be imported: it may want
            # what only its own command installs (matplotlib)
            subs = [Path(d) / f"{name}.py" for d in getattr(mod, "__path__", [])]
            if not hasattr(mod, name) and not any(p.is_file() for p in subs):
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports what does not exist: {missing}"
