"""Every error class of the package derives from one base, NapariMitosisError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import napari_mitosis
from napari_mitosis.errors import NapariMitosisError


def _error_classes():
    for info in pkgutil.walk_packages(napari_mitosis.__path__, "napari_mitosis."):
        if info.name.endswith("__main__") or info.name.startswith(("napari_mitosis.plugin", "napari_mitosis.widgets")):
            continue  # Qt: imported by the GUI tests
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning) and obj.__module__ == info.name:
                yield name, obj


def test_every_error_class_of_the_package_derives_from_the_one_base():
    found = dict(_error_classes())
    assert len(found) >= 16
    assert [n for n, c in found.items() if not issubclass(c, NapariMitosisError)] == []


def test_the_errors_keep_their_builtin_base_so_existing_except_clauses_still_catch_them():
    from napari_mitosis.io import SlideError
    from napari_mitosis.models.registry import ModelError

    assert issubclass(SlideError, ValueError) and issubclass(ModelError, RuntimeError)


def test_the_cli_reports_a_package_error_as_one_line(capsys):
    from napari_mitosis.cli import main

    assert main(["info", "/nonexistent/slide.svs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-mitosis: error:") and err.count("\n") == 1
