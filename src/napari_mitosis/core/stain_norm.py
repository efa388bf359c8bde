"""Classical stain normalisation as fit/transform objects (pure numpy).

All normalisers share one interface:

- ``fit(reference, mpp=None)`` learns the target style from an RGB image (or region),
- ``transform(image, source=None, mpp=None)`` recolours an RGB image in that style;
  ``source`` are the image's own statistics from :meth:`source_stats`,
  computed once on a whole-slide overview so that every tile of a slide is
  transformed the same way (no seams); ``mpp``, the pixel size, is used
  only by resolution-dependent methods (the neural one),
- ``to_dict()`` / :func:`normalizer_from_dict` (and :func:`save_normalizer` /
  :func:`load_normalizer`) serialise a fitted normaliser.

Glass stays white: pixels with (almost) no optical density are left as they
are and the transform fades in with the density, so the failure the SVD
method shows in the paper's Fig. 3 (white background coloured as
hematoxylin) cannot happen; outputs are clipped, so there is no NaN or
overflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from skimage import color

from ..errors import NapariMitosisError
from .stain import rgb_to_od

#: Optical density (summed over RGB) below which a pixel is glass.
OD_GLASS = 0.15
#: Smallest image side accepted, in pixels.
MIN_SIDE = 16
#: Fewest tissue pixels a reference or source must have.
MIN_TISSUE_PIXELS = 200
BACKGROUND = 255.0


class StainNormError(NapariMitosisError, ValueError):
    """Input a normaliser cannot use; the message says what is wrong."""


def check_rgb(image, what: str = "image") -> np.ndarray:
    """Validate an RGB uint8 image (refuses grayscale, tiny and non-uint8 input)."""
    image = np.asarray(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise StainNormError(f"the {what} is grayscale; stain normalisation needs an RGB H&E image")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise StainNormError(f"the {what} must be (rows, cols, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise StainNormError(f"the {what} must be 8-bit (uint8), got {image.dtype}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise StainNormError(f"the {what} is {image.shape[1]}x{image.shape[0]} px; at least {MIN_SIDE} px a side is needed")
    return image[..., :3]


def tissue_weight(image: np.ndarray) -> np.ndarray:
    """0 on glass, 1 on tissue, a ramp in between.

    Stained tissue is coloured (saturation) or dense (optical density); glass,
    whatever its exact brightness (230-255 depending on the scanner), is
    neither.

    Examples
    --------
    >>> img = np.array([[[243, 243, 243], [230, 180, 210], [90, 60, 140]]], np.uint8)
    >>> tissue_weight(img).round(2).tolist()
    [[0.0, 1.0, 1.0]]
    """
    rgb = np.asarray(image)[..., :3].astype(np.float32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    sat = (hi - lo) / np.maximum(hi, 1.0)
    od = rgb_to_od(image, background=BACKGROUND).sum(axis=2)
    w = np.maximum(np.clip((sat - 0.04) / 0.06, 0, 1), np.clip((od - 2 * OD_GLASS) / OD_GLASS, 0, 1))
    return w.astype(np.float32)


def _tissue_pixels(image: np.ndarray, what: str) -> np.ndarray:
    mask = tissue_weight(image) >= 1.0
    if mask.sum() < MIN_TISSUE_PIXELS:
        raise StainNormError(
            f"the {what} has no tissue (only {int(mask.sum())} stained pixels); "
            "pick a region with stained tissue, not blank glass"
        )
    return mask


def blend_background(original: np.ndarray, normalised: np.ndarray) -> np.ndarray:
    w = tissue_weight(original)[..., None]
    out = w * normalised + (1 - w) * original.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class StainNormalizer:
    """Base class: see the module docstring for the interface."""

    method = "base"
    #: context (pixels) a tile needs around it; 0 for per-pixel methods
    halo = 0

    def __init__(self):
        self.target = None

    @property
    def fitted(self) -> bool:
        return self.target is not None

    def fit(self, reference, mpp: float | None = None):
        """Learn the target style from an RGB reference image; returns self.

        ``mpp`` is unused here: colour statistics do not depend on resolution.
        """
        reference = check_rgb(reference, "reference")
        self.target = self.source_stats(reference, what="reference")
        return self

    def source_stats(self, image, what: str = "image", mpp: float | None = None) -> dict:  # pragma: no cover
        raise NotImplementedError

    def transform(self, image, source: dict | None = None, mpp: float | None = None) -> np.ndarray:
        """Recolour ``image`` in the fitted style.

        Parameters
        ----------
        image : (rows, cols, 3) uint8
        source : dict, optional
            The image's statistics (:meth:`source_stats`), e.g. computed on a
            slide overview so all tiles share them. Computed from ``image``
            when omitted.
        """
        if not self.fitted:
            raise StainNormError(f"{self.method}: call fit(reference) before transform")
        image = check_rgb(image, "image") if source is None else np.asarray(image)[..., :3]
        if source is None:
            try:
                source = self.source_stats(image)
            except StainNormError:
                return image.copy()  # nothing to normalise: all glass
        return blend_background(image, self._apply(image, source))

    def to_dict(self) -> dict:
        return {"method": self.method, "target": _jsonable(self.target)}

    def _apply(self, image, source):  # pragma: no cover - abstract
        raise NotImplementedError


class ReinhardNormalizer(StainNormalizer):
    """Reinhard et al. (2001): match mean and standard deviation in Lab, over tissue.

    Examples
    --------
    >>> from napari_mitosis.core.synthetic import synthetic_he
    >>> ref = synthetic_he((128, 128), seed=1, tissue="full")[0]
    >>> src = synthetic_he((128, 128), seed=2, tissue="full", eosin=(0.1, 0.9, 0.3))[0]
    >>> out = ReinhardNormalizer().fit(ref).transform(src)
    >>> out.shape, out.dtype
    ((128, 128, 3), dtype('uint8'))
    """

    method = "reinhard"

    def source_stats(self, image, what: str = "image", mpp: float | None = None) -> dict:
        mask = _tissue_pixels(image, what)
        lab = color.rgb2lab(image)[mask]
        return {"mean": lab.mean(axis=0), "std": lab.std(axis=0) + 1e-6}

    def _apply(self, image, source):
        lab = color.rgb2lab(image)
        t = self.target
        lab = (lab - source["mean"]) / source["std"] * np.asarray(t["std"]) + np.asarray(t["mean"])
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        return np.clip(color.lab2rgb(lab) * 255.0, 0, 255)


class MacenkoNormalizer(StainNormalizer):
    """Macenko et al. (2009): stain vectors from the SVD of optical density.

    The plane of the two largest singular vectors of the tissue pixels'
    optical density holds the stains; the extreme angles (``alpha`` and
    ``100 - alpha`` percentiles) give the hematoxylin and eosin vectors;
    concentrations are scaled so their 99th percentile matches the
    reference's.

    Examples
    --------
    >>> from napari_mitosis.core.synthetic import synthetic_he
    >>> ref = synthetic_he((128, 128), seed=1, tissue="full")[0]
    >>> norm = MacenkoNormalizer().fit(ref)
    >>> norm.target["stains"].shape
    (2, 3)
    """

    method = "macenko"

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def source_stats(self, image, what: str = "image", mpp: float | None = None) -> dict:
        mask = _tissue_pixels(image, what)
        od = rgb_to_od(image, background=BACKGROUND)[mask].astype(np.float64)
        od = od[(od > OD_GLASS / 3).all(axis=1)]
        if len(od) < MIN_TISSUE_PIXELS:
            raise StainNormError(f"the {what} has too little stained tissue to estimate its stains")
        _, vecs = np.linalg.eigh(np.cov(od.T))
        plane = vecs[:, [2, 1]].T  # the two largest principal directions
        plane *= np.sign(plane.sum(axis=1, keepdims=True) + 1e-12)  # point into positive OD
        proj = od @ plane.T
        angles = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(angles, [self.alpha, 100 - self.alpha])
        v1 = plane.T @ np.array([np.cos(lo), np.sin(lo)])
        v2 = plane.T @ np.array([np.cos(hi), np.sin(hi)])
        # hematoxylin absorbs more red than eosin does
        h, e = (v1, v2) if v1[0] / np.linalg.norm(v1) > v2[0] / np.linalg.norm(v2) else (v2, v1)
        stains = np.stack([h / np.linalg.norm(h), e / np.linalg.norm(e)])
        conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
        max_conc = np.percentile(np.clip(conc, 0, None), 99, axis=1) + 1e-6
        return {"stains": stains, "max_conc": max_conc}

    def _apply(self, image, source):
        od = rgb_to_od(image, background=BACKGROUND).reshape(-1, 3).astype(np.float64)
        conc = np.linalg.lstsq(np.asarray(source["stains"]).T, od.T, rcond=None)[0]
        conc = np.clip(conc, 0, None) * (np.asarray(self.target["max_conc"]) / np.asarray(source["max_conc"]))[:, None]
        out_od = (np.asarray(self.target["stains"]).T @ conc).T
        out = BACKGROUND * np.exp(-np.clip(out_od, 0, 20))
        return out.reshape(image.shape)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "alpha": self.alpha}


CLASSICAL = {"reinhard": ReinhardNormalizer, "macenko": MacenkoNormalizer}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _arrays(obj):
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return np.asarray(obj, dtype=float)
    return obj


def normalizer_from_dict(data: dict) -> StainNormalizer:
    """Rebuild a fitted classical normaliser from :meth:`StainNormalizer.to_dict` (any method,
    the neural one too: :func:`napari_mitosis.models.stain_net.normalizer_from_dict`)."""
    method = data.get("method")
    if method in CLASSICAL:
        norm = CLASSICAL[method](**({"alpha": data["alpha"]} if "alpha" in data else {}))
        norm.target = _arrays(data["target"]) if data.get("target") is not None else None
        return norm
    if method == "neural":
        raise StainNormError("a neural stain normaliser is rebuilt by napari_mitosis.models.stain_net.normalizer_from_dict "
                             "(it needs the network)")
    raise StainNormError(f"unknown stain normalisation method {method!r}")


def save_normalizer(norm: StainNormalizer, path) -> Path:
    """Write a fitted normaliser as JSON (atomically); a fine-tuned network's
    weights go beside it as ``<name>.pt``."""
    path = Path(path)
    data = norm.to_dict()
    if data.get("finetuned"):
        import torch

        weights = path.with_suffix(".pt")
        torch.save({k: v.detach().cpu() for k, v in norm.net.state_dict().items()}, weights)
        data["weights"] = weights.name
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def read_normalizer_dict(path) -> dict:
    """The JSON of a normaliser written by :func:`save_normalizer`, or a clear :class:`StainNormError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StainNormError(f"{path}: not a saved stain normaliser ({exc})") from exc


def load_normalizer(path) -> StainNormalizer:
    """Read a classical normaliser written by :func:`save_normalizer` (any method, the neural one
    too: :func:`napari_mitosis.models.stain_net.load_normalizer`)."""
    return normalizer_from_dict(read_normalizer_dict(path))
