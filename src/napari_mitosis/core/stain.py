"""Beer-Lambert stain model for H&E brightfield images.

Transmitted light through a stained section follows Beer-Lambert:
``I = I0 * exp(-OD)`` with the optical density ``OD`` the sum of each stain's
concentration times its (unit) optical-density vector in RGB.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston hematoxylin optical-density vector (R, G, B).
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
#: Ruifrok & Johnston eosin optical-density vector (R, G, B).
EOSIN = np.array([0.072, 0.990, 0.105])

#: Intensity of unobstructed light (bright-field background), per channel.
BACKGROUND = 245.0


def as_rgb(image, name: str = "image", allow_grey: bool = False) -> np.ndarray:
    """Return ``image`` as an ``(H, W, 3)`` uint8 RGB array or raise a clear ``ValueError``.

    An alpha channel is dropped; floats in [0, 1] are scaled to [0, 255];
    greyscale is refused (H&E is colour) unless ``allow_grey`` repeats it.

    Examples
    --------
    >>> as_rgb(np.zeros((2, 3, 4), np.uint8)).shape
    (2, 3, 3)
    >>> as_rgb(np.ones((2, 2, 3)))[0, 0].tolist()
    [255, 255, 255]
    """
    a = np.asarray(image)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 2)):
        if not allow_grey:
            raise ValueError(f"{name}: is greyscale ({a.shape}); H&E analysis needs an RGB image")
        a = np.repeat(a.reshape(a.shape[:2] + (-1,))[..., :1], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{name} must be an RGB image (rows, columns, 3), got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return a


def hed_jitter(rgb, rng: np.random.Generator, scale: float = 0.25, shift: float = 0.05) -> np.ndarray:
    """Random stain variation (Tellez et al. 2018): hematoxylin and eosin optical
    densities each scaled by ``1 +- scale`` and shifted by ``+- shift`` on stained pixels.

    Returns float32 RGB in [0, 255]; with ``scale = shift = 0`` the image is unchanged.

    Examples
    --------
    >>> img = np.full((4, 4, 3), 128, np.uint8)
    >>> bool(np.allclose(hed_jitter(img, np.random.default_rng(0), 0, 0), img, atol=0.5))
    True
    """
    od = -np.log((np.asarray(rgb, np.float32) + 1.0) / 256.0)
    conc = od @ HED_MATRIX_INV
    a = rng.uniform(1 - scale, 1 + scale, 3).astype(np.float32)
    b = rng.uniform(-shift, shift, 3).astype(np.float32)
    a[2], b[2] = 1.0, 0.0  # the residual channel is not a stain
    conc = conc * a + b * (conc.sum(axis=-1, keepdims=True) > 0.05)
    return np.clip(256.0 * np.exp(-(conc @ HED_MATRIX)) - 1.0, 0, 255).astype(np.float32)


def unit(vector) -> np.ndarray:
    """Return ``vector`` scaled to unit Euclidean length.

    Examples
    --------
    >>> unit([3.0, 4.0, 0.0])
    array([0.6, 0.8, 0. ])
    """
    v = np.asarray(vector, dtype=float)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"stain vector {vector!r} has no length")
    return v / n


#: Hematoxylin, eosin and their cross product (rows): the stain unmixing basis.
HED_MATRIX = np.stack([HEMATOXYLIN / np.linalg.norm(HEMATOXYLIN), EOSIN / np.linalg.norm(EOSIN), np.cross(HEMATOXYLIN, EOSIN)])
HED_MATRIX[2] /= np.linalg.norm(HED_MATRIX[2])
HED_MATRIX = HED_MATRIX.astype(np.float32)
HED_MATRIX_INV = np.linalg.inv(HED_MATRIX).astype(np.float32)


def rgb_to_od(rgb, background: float = BACKGROUND) -> np.ndarray:
    """Optical density of an RGB uint8 image (float32, >= 0, finite).

    Examples
    --------
    >>> rgb_to_od(np.array([[[245, 245, 245]]], dtype=np.uint8))[0, 0]
    array([0., 0., 0.], dtype=float32)
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    od = -np.log(np.clip(rgb, 1.0, None) / np.float32(background))
    return np.maximum(od, 0.0, out=od)


def od_to_rgb(od, background: float = BACKGROUND) -> np.ndarray:
    """RGB uint8 image from optical density (inverse of :func:`rgb_to_od`).

    Examples
    --------
    >>> od_to_rgb(np.zeros((1, 1, 3)))[0, 0]
    array([245, 245, 245], dtype=uint8)
    """
    rgb = background * np.exp(-np.asarray(od, dtype=np.float32))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_stains(concentrations, vectors, background: float = BACKGROUND) -> np.ndarray:
    """Render stain concentration maps through the Beer-Lambert model.

    Parameters
    ----------
    concentrations : sequence of (H, W) arrays
        One concentration map per stain (non-negative).
    vectors : sequence of length-3 vectors
        The optical-density vector of each stain; normalised to unit length.
    background : float
        Light intensity where there is no stain.

    Returns
    -------
    (H, W, 3) uint8 RGB image.

    Examples
    --------
    >>> h = np.array([[0.0, 1.0]])
    >>> e = np.zeros((1, 2))
    >>> rgb = render_stains([h, e], [HEMATOXYLIN, EOSIN])
    >>> rgb[0, 0].tolist(), bool((rgb[0, 1] < rgb[0, 0]).all())
    ([245, 245, 245], True)
    """
    od = None
    for conc, vec in zip(concentrations, vectors, strict=True):
        term = np.asarray(conc, dtype=np.float32)[..., None] * unit(vec).astype(np.float32)
        od = term if od is None else od + term
    return od_to_rgb(od, background)


def stain_basis(stains) -> np.ndarray:
    """A 3 x 3 optical-density basis from hematoxylin and eosin vectors: the two unit stain
    vectors and their unit cross product (the residual direction), one per row.

    Examples
    --------
    >>> b = stain_basis([HEMATOXYLIN, EOSIN])
    >>> b.shape, bool(np.allclose(np.linalg.norm(b, axis=1), 1))
    ((3, 3), True)
    """
    h, e = unit(stains[0]), unit(stains[1])
    return np.stack([h, e, unit(np.cross(h, e))]).astype(np.float32)


def restain(rgb, source, target, background: float = 255.0) -> np.ndarray:
    """Re-render an H&E image with other stain vectors (stain mix-up, Chang et al. 2021).

    The optical density is split along the ``source`` stain vectors (hematoxylin, eosin; e.g. the
    image's Macenko vectors) and rendered again along ``target``: each stain keeps its amount
    and takes the other lab's hue. ``background`` as the vectors' estimate (255 for
    :class:`~napari_mitosis.core.stain_norm.MacenkoNormalizer`).

    Returns uint8 RGB of the same shape; with ``target`` equal to ``source`` the image is
    unchanged to rounding.

    Examples
    --------
    >>> img = render_stains([np.full((2, 2), 0.5), np.full((2, 2), 0.3)], [HEMATOXYLIN, EOSIN], 255.0)
    >>> same = restain(img, [HEMATOXYLIN, EOSIN], [HEMATOXYLIN, EOSIN])
    >>> int(np.abs(same.astype(int) - img).max()) <= 1
    True
    >>> bluer = restain(img, [HEMATOXYLIN, EOSIN], [[0.45, 0.75, 0.48], EOSIN])
    >>> bool(bluer[0, 0, 2] < img[0, 0, 2])
    True
    """
    od = rgb_to_od(rgb, background)
    conc = od @ np.linalg.inv(stain_basis(source))
    return od_to_rgb(conc @ stain_basis(target), background)
