"""Shared fixtures: the repository's bundled model and data, and the `fedclip` CLI built
from this checkout (the module and the CLI must come from the same source to compare)."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL = REPO / "weights" / "tiny-clip"
DATA = REPO / "data" / "pacs-mini"


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    """The release `fedclip` binary, built here first (a no-op when it is fresh)."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "fedclip"],
        cwd=REPO,
        check=True,
    )
    binary = target / "release" / "fedclip"
    assert binary.is_file(), f"{binary} was not built"
    return binary


def run_cli(cli: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cli), *args], capture_output=True, text=True, timeout=300
    )


def cli_error(result: subprocess.CompletedProcess) -> str:
    """The message the CLI printed after `error: ` (its last line)."""
    assert result.returncode != 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr
    return line[len("error: ") :]


@pytest.fixture(scope="session")
def images() -> list:
    """A dozen bundled images across domains and classes, in a fixed order."""
    files = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    assert len(files) > 100
    return [str(p) for p in files[::47]]
