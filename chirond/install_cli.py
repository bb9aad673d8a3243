"""`chirond install --print`: where the installed package keeps the files a site copies out (the
example config, the systemd unit, scenarios, profiles), and the commands that put them in place.
It prints; it changes nothing."""

from __future__ import annotations

import argparse
import json
import shutil

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("install", help="show where the example config, the unit, scenarios and profiles are",
                       description="Print where this installation keeps the files a site copies out, and "
                                   "the commands that install them. Changes nothing.")
    p.add_argument("--print", action="store_true", required=True, help="print the paths (the only mode)")
    p.add_argument("--json", action="store_true", help="as one JSON object")
    p.set_defaults(func=main)
