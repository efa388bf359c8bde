"""A declarative model registry: weights, their working resolution and their card.

Each shipped model is three files side by side in :data:`WEIGHTS_DIR`:

- ``NAME.pt`` -- the ``state_dict`` (loaded with ``weights_only=True``),
- ``NAME.json`` -- the :class:`ModelSpec`: which network to build with which
  arguments, the patch size and pixel size it works at, its classes and
  thresholds, and how it was made (data, metrics, the command),
- ``NAME.md`` -- the model card for people.

``load_model(name)`` returns the network ready for inference on the chosen
device together with its spec, so callers rescale inputs to ``spec.mpp``.
Training commands write all three with :func:`save_model`.

A model is chosen by its registry name only: a name is a plain file stem (letters, digits,
``.``, ``_``, ``-``), never a path, so ``../../tmp/x/evil`` is refused before anything is read.
A user's own model lives in a folder they name explicitly (``folder=``). A spec cannot run
code of its own choosing: its ``builder`` must be one of the project's architectures in
:data:`ALLOWED_BUILDERS`. Each spec carries the SHA-256 of its weights file; shipped models
must have one, and the file's bytes are checked against it at load.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import NapariMitosisError

WEIGHTS_DIR = Path(__file__).parent / "weights"


class ModelError(NapariMitosisError, RuntimeError):
    """A model cannot be found or loaded; the message says what to do."""


#: The networks a spec may build: the project's own architectures, nothing else. A spec's
#: ``builder`` is looked up here; an arbitrary ``module:callable`` is never imported.
ALLOWED_BUILDERS = frozenset({
    "napari_mitosis.models.gstn:build_gstn",
    "napari_mitosis.models.gstn:build_baseline",
    "napari_mitosis.models.screen_net:build_screen_net",
    "napari_mitosis.models.mil:build_mil",
    "napari_mitosis.models.infogan:build_infogan",
    "napari_mitosis.models.unet:build_unet",
    "napari_mitosis.models.nuclei_net:build_nuclei_net",
    "napari_mitosis.models.stain_net:StainTransferNet",
    "napari_mitosis.models.dense_net:build_cell_dense",
    "napari_mitosis.models.effnet:build_effnet_classifier",
})

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name) -> str:
    """``name`` if it is a plain registry name (a file stem: letters, digits, ``.``, ``_``,
    ``-``, no path separators, no ``..``); otherwise a :class:`ModelError`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ModelError(
            f"{name!r} is not a model name: use a registry name such as 'cell-gstn' "
            f"(shipped: {', '.join(list_models()) or 'none'}); for a model of your own, name its "
            f"folder explicitly (folder=, or the command's model-folder option) and the model by "
            f"its name in that folder")
    return name


def check_builder(builder, name: str = "?") -> str:
    """``builder`` if it is one of :data:`ALLOWED_BUILDERS`; otherwise a :class:`ModelError`."""
    if builder not in ALLOWED_BUILDERS:
        raise ModelError(
            f"model {name!r}: its spec asks for the network {builder!r}, which is not one of "
            f"napari-mitosis's architectures ({', '.join(sorted(ALLOWED_BUILDERS))}); refusing to load it")
    return builder


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and how to use it.

    Attributes
    ----------
    name : str
        Registry name, also the file stem.
    task : str
        ``segmentation``, ``classification``, ``stain``, ``heatmap`` ...
    builder : str
        ``module:callable`` that returns the ``torch.nn.Module``.
    config : dict
        Keyword arguments for the builder.
    mpp : float
        Working pixel size (um/px); inputs are rescaled to it.
    patch_size : int
        Input side in pixels at ``mpp``.
    classes : list of str
        Output classes, when the model has any.
    thresholds : dict
        Operating points chosen on validation data (name -> value).
    metrics : dict
        Validation results (name -> value), as reported in the model card.
    training : dict
        Data, split and the command that produced the weights.
    views : int
        Test-time views of a classifier (the mean of its output over this many flips and
        rotations of each input, 1, 2, 4 or 8) that its thresholds were chosen with.
    sha256 : str
        Hex SHA-256 of ``NAME.pt``, written by :func:`save_model` and checked at load.
    """

    name: str
    task: str
    builder: str
    config: dict = field(default_factory=dict)
    mpp: float = 0.5
    patch_size: int = 256
    classes: list = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    views: int = 1
    sha256: str = ""

    def build(self):
        """Instantiate the (untrained) network (only one of :data:`ALLOWED_BUILDERS`)."""
        check_builder(self.builder, self.name)
        if not isinstance(self.config, dict):
            raise ModelError(f"model {self.name!r}: its spec's config is not a mapping")
        module, _, attr = self.builder.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"model {self.name!r}: cannot find its network {self.builder!r} ({exc})") from exc
        return factory(**self.config)


def list_models(task: str | None = None, folder: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the models shipped (optionally only those of one task)."""
    names = []
    for spec_file in sorted(Path(folder).glob("*.json")):
        if (spec_file.with_suffix(".pt")).exists():
            if task is None or read_spec(spec_file.stem, folder).task == task:
                names.append(spec_file.stem)
    return names


def read_spec(name: str, folder: Path = WEIGHTS_DIR) -> ModelSpec:
    """The spec of model ``name`` in ``folder``. ``name`` must be a plain registry name and
    the spec's builder one of :data:`ALLOWED_BUILDERS`; anything else is a :class:`ModelError`."""
    check_name(name)
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        available = ", ".join(list_models(folder=folder)) or "none"
        raise ModelError(f"no model named {name!r} (available: {available})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"model {name!r}: its spec {path.name} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"model {name!r}: its spec {path.name} is not a JSON object")
    known = set(ModelSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"model {name!r}: its spec has unknown fields {unknown}")
    try:
        spec = ModelSpec(**data)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: its spec is incomplete ({exc})") from exc
    check_builder(spec.builder, name)
    return spec


def resolve_device(device: str = "auto"):
    """``auto`` -> CUDA when there is a GPU, else CPU; ``cuda`` without one is a clear error."""
    import torch

    device = str(device).lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("CUDA was asked for but no GPU is available here; use device 'auto' or 'cpu'")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ModelError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def load_model(name: str, device: str = "auto", folder: Path = WEIGHTS_DIR):
    """Build a shipped model, load its weights and put it in eval mode on ``device``.

    Returns
    -------
    (torch.nn.Module, ModelSpec)
    """
    import torch

    spec = read_spec(name, folder)
    weights = Path(folder) / f"{name}.pt"
    if not weights.is_file():
        raise ModelError(f"model {name!r}: weights file {weights} is missing; reinstall napari-mitosis")
    shipped = Path(folder).resolve() == WEIGHTS_DIR.resolve()
    if spec.sha256 or shipped:
        if not spec.sha256:
            raise ModelError(f"model {name!r}: its spec carries no sha256 of its weights; reinstall napari-mitosis")
        actual = file_sha256(weights)
        if actual.lower() != str(spec.sha256).lower():
            raise ModelError(
                f"model {name!r}: weights file {weights} does not match the sha256 in its spec "
                f"(damaged or replaced: {actual[:12]}... instead of {str(spec.sha256)[:12]}...); "
                f"reinstall napari-mitosis or retrain the model")
    net = spec.build()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"model {name!r}: cannot load {weights.name} ({type(exc).__name__}: {exc})") from exc
    return net.to(resolve_device(device)).eval(), spec


def save_model(net, spec: ModelSpec, card: str, folder: Path = WEIGHTS_DIR) -> Path:
    """Write ``NAME.pt`` (state_dict), ``NAME.json`` (spec, with the sha256 of ``NAME.pt``)
    and ``NAME.md`` (card)."""
    import dataclasses

    import torch

    check_name(spec.name)
    check_builder(spec.builder, spec.name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    tmp = folder / f".{spec.name}.pt.part"
    torch.save(state, tmp)
    digest = file_sha256(tmp)
    tmp.replace(folder / f"{spec.name}.pt")
    spec = dataclasses.replace(spec, sha256=digest)
    (folder / f"{spec.name}.json").write_text(json.dumps(asdict(spec), indent=2, default=float))
    (folder / f"{spec.name}.md").write_text(card)
    return folder / f"{spec.name}.pt"
