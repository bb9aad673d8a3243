"""Build hook only; the package's metadata is in pyproject.toml. The wheel also carries the files a
site needs that the repository keeps outside the package (etc/: the example configs and the systemd
unit; benchmarks/scenarios/: the simulator's scenarios), copied to chirond/data/share, where
chirond.bundled finds them and `chirond install --print` shows them."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHARE = {
    "etc": [ROOT / "etc" / n for n in ("chirond.toml", "demo.toml", "chirond.service")],
    "scenarios": sorted((ROOT / "benchmarks" / "scenarios").glob("*.toml")),
}


class BuildPyWithShare(build_py):
    def run(self) -> None:
        super().run()
        for sub, files in SHARE.items():
            dest = Path(self.build_lib) / "chirond" / "data" / "share" / sub
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, dest / f.name)


setup(cmdclass={"build_py": BuildPyWithShare})
