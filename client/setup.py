"""Build hook: generate the gRPC stubs from ../proto when they are missing (a fresh clone).

`make proto` normally generates them into hamlet_client/_generated; this makes `pip install ./client`
work on a fresh clone too. grpcio-tools is a build requirement (pyproject.toml), never a runtime one.
"""

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "hamlet_client" / "_generated" / "hamlet"
GENERATOR = HERE.parent / "scripts" / "gen_proto.py"


class BuildWithStubs(build_py):
    def run(self) -> None:
        if not GENERATED.is_dir():
            if not GENERATOR.is_file():
                raise SystemExit(
                    "hamlet-client: the generated gRPC stubs are missing and ../scripts/gen_proto.py is not "
                    "here to make them; build from a full checkout of the repository (or run `make proto`)."
                )
            subprocess.run([sys.executable, str(GENERATOR)], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
