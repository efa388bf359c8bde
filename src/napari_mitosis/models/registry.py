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
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import NapariMitosisError

WEIGHTS_DIR = Path(__file__).parent / "weights"


class ModelError(NapariMitosisError, RuntimeError):
    """A model cannot be found or loaded; the message says what to do."""


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

    def build(self):
        """Instantiate the (untrained) network."""
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
    path = Path(folder) / f"{name}.json"
    if not path.exists():
        available = ", ".join(list_models(folder=folder)) or "none"
        raise ModelError(f"no model named {name!r} (available: {available})")
    data = json.loads(path.read_text())
    return ModelSpec(**data)


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
    if not weights.exists():
        raise ModelError(f"model {name!r}: weights file {weights} is missing; reinstall napari-mitosis")
    net = spec.build()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"model {name!r}: cannot load {weights.name} ({type(exc).__name__}: {exc})") from exc
    return net.to(resolve_device(device)).eval(), spec


def save_model(net, spec: ModelSpec, card: str, folder: Path = WEIGHTS_DIR) -> Path:
    """Write ``NAME.pt`` (state_dict), ``NAME.json`` (spec) and ``NAME.md`` (card)."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    tmp = folder / f".{spec.name}.pt.part"
    torch.save(state, tmp)
    tmp.replace(folder / f"{spec.name}.pt")
    (folder / f"{spec.name}.json").write_text(json.dumps(asdict(spec), indent=2, default=float))
    (folder / f"{spec.name}.md").write_text(card)
    return folder / f"{spec.name}.pt"
