"""The wheel, as a user installs it: built from this checkout, installed (not editable) into a fresh venv,
run from another folder.

The fresh venv borrows this environment's dependencies (onnx, the runtimes, OpenCV...) through a path entry,
so nothing is downloaded; xai-graph itself comes only from the wheel (this environment's editable install
is a path hook that a plain path entry does not activate).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh venv with the wheel installed."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(folder / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((folder / "dist").glob("xai_graph-*.whl"))
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def test_wheel_contents_are_one_package_with_its_samples(installed):
    wheel = next(installed.parent.parent.parent.glob("dist/xai_graph-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"xai_graph", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for packaged in (
        "xai_graph/cli/main.py",
        "xai_graph/samples/efficientnet_lite0.onnx",
        "xai_graph/samples/images/chelsea.png",
        "xai_graph/samples/annotations/coco.json",
    ):
        assert packaged in names


def test_demo_and_module_entry_run_from_another_folder(installed, tmp_path):
    where = subprocess.run(
        [str(installed), "-c", "import xai_graph; print(xai_graph.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert str(installed.parent.parent) in where.stdout, where.stdout  # the wheel's copy, not the checkout
    demo = subprocess.run(
        [str(installed.parent / "xai-graph"), "demo", "out"], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert demo.returncode == 0, demo.stderr
    assert "Egyptian_cat" in demo.stdout and (tmp_path / "out" / "index.html").is_file()
    help_text = subprocess.run(
        [str(installed), "-m", "xai_graph", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert help_text.returncode == 0 and "insert" in help_text.stdout and "eval" in help_text.stdout
