"""The package's layers import only downwards, read from the imports themselves (lazy ones too).

    errors <- core <- io <- models <- pipeline <- {training, plugin, cli}

``errors`` imports nothing of the package; a module may import its own layer;
the CLI may also import the plugin (``demo --gui``) and the trainers (``train``).
No module imports another module's private (``_``) names; a private module is
used only inside its own package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import napari_mitosis

ROOT = Path(napari_mitosis.__file__).parent
RANK = {"errors": 0, "core": 1, "io": 2, "models": 3, "pipeline": 4, "training": 5, "plugin": 5, "cli": 6}
SIDEWAYS = {("cli", "plugin"), ("cli", "training")}


def _imports(path: Path):
    """(line, imported module as a list of names) of every import of the package in ``path``."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            names = [[*target, a.name] for a in node.names] if not node.module else [target]
            for t in names:
                yield node.lineno, t
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")


def upward_imports() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        layer = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem == "errors" else None
        if layer not in RANK:
            continue  # the package's __init__ / __main__: the front door, above everything
        for line, target in _imports(path):
            if target[0] != "napari_mitosis" or len(target) < 2 or target[1] not in RANK:
                continue
            other = target[1]
            if other != layer and (layer, other) not in SIDEWAYS and RANK[other] >= RANK[layer]:
                found.append(f"{rel}:{line}: {layer} imports {'.'.join(target)}")
    return found


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_the_check_sees_lazy_imports_inside_functions(tmp_path, monkeypatch):
    fake = tmp_path / "napari_mitosis"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "x.py").write_text("def f():\n    from ..pipeline import run\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert upward_imports() == ["core/x.py:2: core imports napari_mitosis.pipeline"]


def private_imports() -> list[str]:
    """``from .x import _y`` of another module's private name, and private modules imported from outside their package."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        package = list(rel.parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or (node.level == 0 and not (node.module or "").startswith("napari_mitosis")):
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
            else:
                base = []
            module = base + [m for m in (node.module or "").split(".") if m and m != "napari_mitosis"]
            for a in node.names:
                target = [*module, a.name]
                for i, name in enumerate(target):
                    if not name.startswith("_") or name.startswith("__"):
                        continue
                    # a private module used inside its own package is fine (io/_backends, cli/_common)
                    is_module = ROOT.joinpath(*target[: i + 1]).is_dir() or ROOT.joinpath(*target[:i], name + ".py").is_file()
                    if not (is_module and target[:i] == package):
                        found.append(f"{rel}:{node.lineno}: imports {'.'.join(target)}")
                        break
    return found


def test_no_module_imports_a_private_name_of_another():
    assert private_imports() == []


def test_the_private_check_sees_a_private_name_imported_from_another_module(tmp_path, monkeypatch):
    fake = tmp_path / "napari_mitosis"
    (fake / "pipeline").mkdir(parents=True)
    (fake / "pipeline" / "x.py").write_text("def f():\n    from .detect import _check_mpp, check_roi\n")
    (fake / "pipeline" / "y.py").write_text("from . import _own\n")
    (fake / "pipeline" / "_own.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert private_imports() == ["pipeline/x.py:2: imports pipeline.detect._check_mpp"]
