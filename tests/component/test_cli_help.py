"""Every command of `chirond` and `chiron` ends its --help with an example (here, not in tests/unit:
building the whole parser imports asyncssh, which runs ldconfig)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from chirond import cli_common
from chirond.cli import chiron_parser, chirond_parser


@pytest.mark.parametrize("build", [chirond_parser, chiron_parser])
def test_every_command_has_an_example_in_its_help(build: Callable[[], argparse.ArgumentParser]) -> None:
    commands = cli_common.walk(build())
    assert len(commands) > 5
    for path, p in commands:
        assert "example" in p.format_help().split("options:")[-1], " ".join(path) or p.prog


