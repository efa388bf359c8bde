"""Stain normalisation of slides: lazy normalised pyramids and region tasks.

The source statistics (stain vectors, Lab moments, or the neural global
descriptor) are computed once on the slide's overview and shared by every
tile, so a normalised slide has no seams and each tile costs only its own
pixels. The neural method runs tiles with a halo.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from ..core.stain_norm import StainNormalizer, StainNormError
from .progress import Progress, Task

#: A reference image is read at the largest pyramid level that fits this.
REFERENCE_SIDE = 2048


def make_normalizer(method: str, device: str = "auto") -> StainNormalizer:
    """A fresh normaliser of ``method`` (``reinhard``, ``macenko`` or ``neural``)."""
    from ..core.stain_norm import CLASSICAL

    method = method.lower()
    if method in CLASSICAL:
        return CLASSICAL[method]()
    if method == "neural":
        from ..models.stain_net import NeuralStainNormalizer

        return NeuralStainNormalizer(device=device)
    raise StainNormError(f"unknown method {method!r}; choose reinhard, macenko or neural")


def read_reference(path, mpp=None):
    """RGB of a reference image or slide (a level that fits REFERENCE_SIDE) and its pixel size."""
    from ..io import open_slide

    with open_slide(path, mpp=mpp) as ref:
        fits = [i for i, s in enumerate(ref.level_shapes) if max(s) <= REFERENCE_SIDE]
        level = fits[0] if fits else ref.level_count - 1
        h, w = ref.level_shapes[level]
        return ref.read_region(level, 0, 0, w, h), ref.level_mpp(level)


def slide_source_stats(slide, norm: StainNormalizer, max_size: int = 2048) -> dict:
    """The slide's own statistics, from an overview (shared by all tiles)."""
    overview = slide.thumbnail(max_size)
    mpp = None if slide.mpp is None else slide.mpp * slide.shape[1] / overview.shape[1]
    return norm.source_stats(overview, what=f"slide {slide.path.name}", mpp=mpp)


def normalized_levels(slide, norm: StainNormalizer, source: dict | None = None) -> list[da.Array]:
    """The slide's pyramid, normalised lazily (a dask computation per tile).

    Examples
    --------
    >>> from napari_mitosis.core.synthetic import synthetic_he
    >>> from napari_mitosis.core.stain_norm import ReinhardNormalizer
    >>> from napari_mitosis.io.slide import Slide
    >>> rgb = synthetic_he((256, 256), seed=1, tissue="full")[0]
    >>> slide = Slide(path=__import__("pathlib").Path("mem"), levels=[da.from_array(rgb, chunks=(128, 128, 3))], mpp=0.25)
    >>> levels = normalized_levels(slide, ReinhardNormalizer().fit(rgb))
    >>> levels[0].shape, levels[0].chunksize
    ((256, 256, 3), (128, 128, 3))
    """
    if not norm.fitted:
        raise StainNormError("fit the normaliser on a reference first")
    source = slide_source_stats(slide, norm) if source is None else source
    out = []
    for i, level in enumerate(slide.levels):
        kwargs = {"dtype": np.uint8, "norm": norm, "source": source, "mpp": slide.level_mpp(i)}
        if norm.halo:
            depth = {0: norm.halo, 1: norm.halo, 2: 0}
            out.append(level.map_overlap(_normalize_block, depth=depth, boundary="reflect", **kwargs))
        else:
            out.append(level.map_blocks(_normalize_block, **kwargs))
    return out


def _normalize_block(block, norm, source, mpp):
    if norm.halo and min(block.shape[:2]) < 16:  # a sliver at the slide's edge: too small for the network
        return block
    return norm.transform(block, source=source, mpp=mpp)


def fit_slide_task(slide, method: str, reference=None, device: str = "auto") -> Task:
    """Fit a normaliser and prepare the slide's lazily normalised pyramid.

    ``reference``: an image or slide file, a level-0 region ``(x, y, w, h)``
    of ``slide`` itself, or None (the neural method's shipped style).
    Returns ``(normaliser, levels)``.
    """
    yield Progress(0, 3, f"loading {method}")
    norm = make_normalizer(method, device=device)
    yield Progress(1, 3, "fitting the reference")
    if isinstance(reference, tuple):
        x, y, w, h = reference
        norm.fit(slide.read_region(0, x, y, w, h), mpp=slide.mpp)
    elif reference is not None:
        norm.fit(*read_reference(reference))
    elif not norm.fitted:
        raise StainNormError(f"{method} needs a reference: an image file or a rectangle on the slide")
    yield Progress(2, 3, "slide statistics")
    return norm, normalized_levels(slide, norm, slide_source_stats(slide, norm))


def normalize_region_task(
    slide, norm: StainNormalizer, level: int, x: int, y: int, w: int, h: int, tile: int = 1024, source=None, batch: int = 4
) -> Task:
    """Normalise a region tile by tile, with progress; returns the (h, w, 3) array.

    ``x, y`` are level-0 pixels and ``w, h`` pixels of ``level`` (as
    :meth:`Slide.read_region`). The neural method runs ``batch`` tiles per
    forward pass (tiles are read at full size, padded with white at the
    slide's edge, so they stack).
    """
    if not norm.fitted:
        raise StainNormError("fit the normaliser on a reference first")
    yield Progress(0, 1, "slide statistics")
    source = slide_source_stats(slide, norm) if source is None else source
    halo = norm.halo
    ds = slide.level_downsamples[level]
    out = np.empty((h, w, 3), np.uint8)
    tiles = [(ty, tx) for ty in range(0, h, tile) for tx in range(0, w, tile)]
    th, tw = min(tile, h), min(tile, w)
    step = batch if hasattr(norm, "transform_batch") else 1
    for k in range(0, len(tiles), step):
        group = tiles[k : k + step]
        yield Progress(k, len(tiles), f"normalising tiles {k + 1}-{k + len(group)} of {len(tiles)}")
        regions = [
            slide.read_region(level, x + int(round((tx - halo) * ds)), y + int(round((ty - halo) * ds)), tw + 2 * halo, th + 2 * halo)
            for ty, tx in group
        ]
        if step > 1:
            done = norm.transform_batch(regions, source=source, mpp=slide.level_mpp(level))
        else:
            done = [norm.transform(r, source=source, mpp=slide.level_mpp(level)) for r in regions]
        for (ty, tx), d in zip(group, done, strict=True):
            ch, cw = min(th, h - ty), min(tw, w - tx)
            out[ty : ty + ch, tx : tx + cw] = d[halo : halo + ch, halo : halo + cw]
    yield Progress(len(tiles), len(tiles), "done")
    return out
