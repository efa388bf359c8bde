"""Packaging: the manifest ships with the installed plugin and validates; imports stay light."""

import importlib
import subprocess
import sys
from importlib.resources import files

import pytest


def test_manifest_is_shipped_inside_the_package():
    text = (files("napari_mitosis") / "napari.yaml").read_text()
    assert "name: napari-mitosis" in text


def test_npe2_validates_the_installed_plugin():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-mitosis"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def _python_names():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-mitosis")
    return [c.python_name for c in manifest.contributions.commands]


@pytest.mark.parametrize("python_name", _python_names())
def test_every_python_name_imports(python_name):
    module, _, attr = python_name.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_importing_the_package_pulls_neither_torch_nor_qt():
    code = (
        "import sys, napari_mitosis, napari_mitosis.io, napari_mitosis.pipeline, napari_mitosis.pipeline.demo, napari_mitosis.cli;"
        "import napari_mitosis.core.synthetic, napari_mitosis.core.tissue, napari_mitosis.io.pyramid_writer;"
        "heavy = [m for m in ('torch', 'qtpy', 'PyQt6', 'PySide6', 'napari') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_never_imports_qt_or_napari():
    from pathlib import Path

    core = Path(files("napari_mitosis")) / "core"
    for source in core.glob("*.py"):
        text = source.read_text()
        for name in ("qtpy", "PyQt", "PySide", "napari.", "import napari"):
            assert name not in text, f"{source.name} mentions {name}"


def test_console_script_is_installed():
    exe = __import__("shutil").which("napari-mitosis") or str(
        __import__("pathlib").Path(sys.executable).with_name("napari-mitosis")
    )
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "napari-mitosis" in result.stdout
