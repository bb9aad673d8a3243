"""The test tree's own rules, checked statically with `ast` (nothing is imported or run):

1. no test module (tests/**/test_*.py) imports another test module: shared helpers live in
   tests/support, fixtures in conftest.py;
2. nothing in tests/unit starts a process: no reference to subprocess, create_subprocess_exec/shell,
   Popen, os.fork/exec*/spawn*/system/posix_spawn or multiprocessing. Such tests go to tests/component
   (or tests/integration when they need the loopback cluster)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # not from tests.support: this check imports nothing of chirond
TESTS = ROOT / "tests"
TEST_FILES = sorted(p for p in TESTS.rglob("test_*.py") if "data" not in p.relative_to(TESTS).parts)
UNIT_FILES = sorted(p for p in (TESTS / "unit").rglob("*.py") if p.name != "conftest.py")  # it holds the guard

# (importing file, imported test module) -> why it is still allowed. Keep this empty.
ALLOWED_IMPORTS: dict[tuple[str, str], str] = {}  # (importer, test module) -> why; none today

PROCESS_MODULES = {"subprocess", "multiprocessing", "pty", "pexpect"}
PROCESS_NAMES = {"create_subprocess_exec", "create_subprocess_shell", "Popen", "fork", "forkpty", "system",
                 "posix_spawn", "posix_spawnp", "spawnv", "spawnl", "spawnve", "spawnle", "execv", "execve",
                 "execvp", "execl", "execlp", "popen"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imported(tree: ast.Module, path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every module and `from` import, relative ones resolved; for
    `from X import a` both X and X.a, since `a` may be a module."""
    package = _module_name(path).rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


TEST_STEMS = {p.stem for p in TEST_FILES}
TEST_DIRS = {p.name for p in TESTS.iterdir() if p.is_dir()}


def _is_test_module(name: str) -> bool:
    """A module of this test tree named test_*: tests.x.test_y, x.test_y (a folder of tests/ on
    sys.path) or test_y (a module next to it)."""
    parts = name.split(".")
    if not parts[-1].startswith("test_"):
        return False
    if parts[0] == "tests" or parts[0] in TEST_DIRS:
        return True
    return len(parts) == 1 and parts[0] in TEST_STEMS


def test_the_checks_see_the_tree() -> None:
    assert len(TEST_FILES) > 30 and any(p.parent.name == "unit" for p in TEST_FILES)
    assert Path(__file__) in UNIT_FILES


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_module_imports_another(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    bad = [f"{rel}:{line}: imports {name}" for line, name in _imported(ast.parse(path.read_text(), rel), path)
           if _is_test_module(name) and (rel, name) not in ALLOWED_IMPORTS]
    assert bad == [], "move what is shared into tests/support (helpers) or a conftest.py (fixtures):\n" + \
        "\n".join(bad)


def process_references(source: str, filename: str = "<test>") -> list[str]:
    """Where `source` refers to a way of starting a process (imports, attributes, bare names)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] in PROCESS_MODULES]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in PROCESS_MODULES:
                found.append(f"{line}: from {node.module} import ...")
            found += [f"{line}: from {node.module} import {a.name}" for a in node.names if a.name in PROCESS_NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in PROCESS_NAMES | PROCESS_MODULES:
            found.append(f"{line}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in PROCESS_MODULES:
            found.append(f"{line}: {node.id}")
    return found


def test_process_references_are_found() -> None:
    """The check below can fail."""
    assert process_references("import subprocess\nsubprocess.run(['true'])\n") == ["1: import subprocess",
                                                                                   "2: subprocess"]
    assert process_references("import asyncio\nasync def f():\n    await asyncio.create_subprocess_exec('x')\n") \
        == ["3: .create_subprocess_exec"]
    assert process_references("import os\nos.fork()\n") == ["2: .fork"]
    assert process_references("from multiprocessing import Process\n") == ["1: from multiprocessing import ..."]
    assert process_references("import os, socket\nos.getpid()\nsocket.socket()\n") == []


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: str(p.relative_to(TESTS)))
def test_unit_tests_start_no_process(path: Path) -> None:
    if path == Path(__file__):
        return  # this file names them in order to find them
    found = process_references(path.read_text(), str(path))
    assert found == [], f"{path.relative_to(ROOT)} starts processes: move those tests to tests/component:\n" + \
        "\n".join(found)
