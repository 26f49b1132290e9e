"""The command lines start without the heavy libraries: --help and --version load no torch, pandas or pyarrow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from movierec.defaults import package_version

# Loaded only once a command runs: a --help or a parse must not pay for them.
HEAVY = ("torch", "pandas", "pyarrow", "numpy", "matplotlib", "requests", "urllib3", "psutil", "yaml", "tqdm")
HEAVY_PROJECT = ("model.data", "model.artifact", "model.core", "model.net", "model.arrow", "model.service")


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running statement."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import movierec.client.cli",
        "import movierec.torchserve.cli",
        "from movierec.client.cli import build_parser; build_parser().parse_args(['predict', '--user', '1', '--movie', '2'])",
    ],
)
def test_command_lines_import_no_heavy_module(statement):
    loaded = loaded_after(statement)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    assert not loaded & set(HEAVY_PROJECT)


@pytest.mark.parametrize(("module", "prog"), [("movierec", "movierec"), ("movierec.torchserve.cli", "movierec-serve")])
def test_version_prints_the_package_version(module, prog):
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [prog, package_version()]
