"""The README's quickstart blocks run as written against a live server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Stack, digits_arrays, write_class_folders, zip_folder


def _blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"```sh (quickstart-[a-z]+)\n(.*?)```", text, flags=re.S))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quickstart")
    images, labels = digits_arrays()
    folder = write_class_folders(root / "digits", images, labels)
    zip_folder(folder, root / "digits.zip")
    return root


def _run(stack: Stack, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update(
        DIGITS_URL=stack.url,
        DIGITS_TOKEN=stack.token,
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_the_readme_has_both_quickstarts() -> None:
    assert set(_blocks()) == {"quickstart-cli", "quickstart-curl"}


@pytest.mark.parametrize("name", ["quickstart-cli", "quickstart-curl"])
def test_quickstart_runs(pg_stack: Stack, workdir: Path, name: str) -> None:
    result = _run(pg_stack, _blocks()[name], workdir)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    if name == "quickstart-cli":
        assert "done after 5.00 epochs" in result.stdout
        assert (workdir / "lenet.tar.gz").stat().st_size > 1000
    else:
        assert '"predictions"' in result.stdout
        assert (workdir / "model.tar.gz").stat().st_size > 1000
