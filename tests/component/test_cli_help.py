"""Generated from the parsers: every command's --help ends with an example; bash completion; man
pages. (Here, not in tests/unit: building the whole parser imports asyncssh, which runs ldconfig.)"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from chirond import cli_common
from chirond.cli import chiron_parser, chirond_main, chirond_parser


@pytest.mark.parametrize("build", [chirond_parser, chiron_parser])
def test_every_command_has_an_example_in_its_help(build: Callable[[], argparse.ArgumentParser]) -> None:
    commands = cli_common.walk(build())
    assert len(commands) > 5
    for path, p in commands:
        assert "example" in p.format_help().split("options:")[-1], " ".join(path) or p.prog




def test_bash_completion_is_generated_from_the_parsers(tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert chirond_main(["install", "--completion", "bash"]) == 0
    script.write_text(out.getvalue())
    probe = f"""
source {script}
COMP_WORDS=(chiron ba); COMP_CWORD=1; _chiron; echo "a=${{COMPREPLY[*]}}"
COMP_WORDS=(chiron batch ""); COMP_CWORD=2; _chiron; echo "b=${{COMPREPLY[*]}}"
COMP_WORDS=(chiron usage --for); COMP_CWORD=2; _chiron; echo "c=${{COMPREPLY[*]}}"
COMP_WORDS=(chirond install --); COMP_CWORD=2; _chirond; echo "d=${{COMPREPLY[*]}}"
"""
    res = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    got = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert got["a"] == "batch"
    assert set(got["b"].split()) >= {"submit", "list", "status", "cancel", "results"}
    assert got["c"] == "--format"
    assert set(got["d"].split()) >= {"--print", "--completion", "--man", "--json"}


def test_man_pages_are_generated_from_the_parsers_and_render_cleanly(tmp_path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert chirond_main(["install", "--man", str(tmp_path)]) == 0
    for prog, build in (("chirond", chirond_parser), ("chiron", chiron_parser)):
        page = tmp_path / f"{prog}.1"
        text = page.read_text()
        assert text.startswith(f".TH {prog.upper()} 1")
        for path, _ in cli_common.walk(build()):
            if path:
                assert f".SS {' '.join((prog, *path))}".replace("-", "\\-") in text, path
        if shutil.which("groff"):
            res = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
                                 timeout=30, check=False)
            assert res.returncode == 0 and not res.stderr, res.stderr
