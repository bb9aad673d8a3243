"""`chirond install --print`: where the installed package keeps the files a site copies out (the
example config, the systemd unit, scenarios, profiles), and the commands that put them in place.
It prints; it changes nothing."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chirond import __version__, bundled
from chirond.profiles import available_profiles


def where() -> dict[str, object]:
    return {
        "version": __version__,
        "example_config": str(bundled.etc_file("chirond.toml")),
        "demo_config": str(bundled.etc_file("demo.toml")),
        "systemd_unit": str(bundled.etc_file("chirond.service")),
        "scenarios_dir": str(bundled.directory("scenarios")),
        "scenarios": bundled.available_scenarios(),
        "profiles_dir": str(bundled.PROFILES_DIR),
        "profiles": available_profiles(),
        "chirond": shutil.which("chirond") or "",
    }


def main(args: argparse.Namespace) -> int:
    from chirond import cli_docs

    programs: dict[str, tuple[Callable[[], argparse.ArgumentParser], str]] = args.programs
    if args.completion:
        for prog, (build, _) in programs.items():
            print(cli_docs.bash_completion(prog, build()))
        return 0
    if args.man:
        out = Path(args.man)
        out.mkdir(parents=True, exist_ok=True)
        for prog, (build, summary) in programs.items():
            (out / f"{prog}.1").write_text(cli_docs.man_page(prog, build(), summary))
        print(f"wrote {out / 'chirond.1'} and {out / 'chiron.1'} (man -l {out / 'chiron.1'})")
        return 0
    w = where()
    if args.json:
        print(json.dumps(w, indent=2))
        return 0
    width = max(map(len, w))
    for key, value in w.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")
    print()
    print("# install them (docs/admin.md, 'Install on a login node'):")
    print(f"install -d -m 750 -o root -g chirond /etc/chirond\n"
          f"install -m 640 -o root -g chirond {w['example_config']} /etc/chirond/chirond.toml\n"
          f"install -m 644 {w['systemd_unit']} /etc/systemd/system/chirond.service\n"
          f"systemctl daemon-reload && systemctl enable --now chirond")
    return 0


def add_parser(sub: argparse._SubParsersAction, programs: dict[str, tuple[Callable[[], Any], str]]) -> None:
    """`programs`: name -> (its parser's builder, a one-line summary), for completion and man pages."""
    p = sub.add_parser("install", help="show where the example config, the unit, scenarios and profiles are",
                       description="Print where this installation keeps the files a site copies out, and "
                                   "the commands that install them. Changes nothing.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--print", action="store_true", help="print the paths and the commands that install them")
    mode.add_argument("--completion", choices=("bash",),
                      help="print bash completion for chirond and chiron (source it, or save it under "
                      "/etc/bash_completion.d/)")
    mode.add_argument("--man", metavar="DIR", help="write the man pages chirond.1 and chiron.1 into DIR")
    p.add_argument("--json", action="store_true", help="with --print: as one JSON object")
    p.set_defaults(func=main, programs=programs)
