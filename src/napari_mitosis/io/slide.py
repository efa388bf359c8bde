"""The ``Slide`` API: one lazy, pyramidal view of any whole-slide image.

``open_slide(path)`` returns a :class:`Slide` whose ``levels`` are dask arrays
(largest first, ``(rows, columns, 3)`` RGB uint8) chunked along the file's own
tiles, so nothing is decoded until a region is asked for. Opening a
multi-gigapixel slide reads only its directory, never its pixels.

Coordinates follow the OpenSlide convention the field knows: ``read_region``
takes its position in level-0 pixels and its size in pixels of the requested
level.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from ..core.resample import mean2x2
from ..errors import NapariMitosisError

#: Pixel-size values outside this range (um/px) are treated as unknown: they
#: are scanner defaults such as 72 dpi, not a microscope's pixel size.
PLAUSIBLE_MPP = (0.02, 50.0)
#: No real slide is larger than this on either side (px); 200 mm at 0.2 um/px.
MAX_SIDE = 1_000_000
#: A region of a level computed by coarsening is read from the stored level's tile reader when
#: that means at most this many stored pixels (a tile's worth); larger ones (overviews of a
#: single-level slide) stream through the level's dask graph, block by block, in bounded memory.
COMPUTED_DIRECT_MAX_PX = 16_000_000
#: A pyramid is extended by coarsening until its smallest level fits this.
SMALLEST_LEVEL = 2048

WHITE = 255


class SlideError(NapariMitosisError, ValueError):
    """A slide cannot be opened or read; the message names the file and what to do."""


class SlideWarning(UserWarning):
    """Something about a slide is off but it can still be shown."""


@dataclass
class Slide:
    """A whole-slide image opened lazily.

    Attributes
    ----------
    path : Path
        The file or folder it was opened from.
    levels : list of dask.array.Array
        The pyramid, largest first; each ``(rows, columns, 3)`` uint8 RGB,
        chunked along the file's tiles.
    mpp : float or None
        Level-0 pixel size in micrometres per pixel, when known.
    objective_power : float or None
        Scanning objective magnification (e.g. 20, 40), when recorded.
    format : str
        ``svs``, ``ndpi``, ``ome-tiff``, ``tiff``, ``ome-zarr`` or ``image``.
    mpp_source : str
        Where ``mpp`` came from (``svs``, ``ome``, ``resolution-tags``,
        ``ome-zarr``, ``override``, or ``unknown``).
    """

    path: Path
    levels: list[da.Array]
    mpp: float | None = None
    objective_power: float | None = None
    format: str = "tiff"
    mpp_source: str = "unknown"
    file_levels: int = 1
    _associated: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict, repr=False)
    #: per stored level, a direct ``(y0, y1, x0, x1) -> array`` reader that skips dask
    _direct: list[Callable | None] = field(default_factory=list, repr=False)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    #: When True, ``read_region`` leaves the pixels of a file tile that cannot be decoded white
    #: and records it in :attr:`bad_tiles` instead of failing the whole region.
    fill_bad_tiles: bool = False
    #: ``{"level", "x", "y", "w", "h" (level-0 px), "error"}`` of each tile read white so far.
    bad_tiles: list = field(default_factory=list, repr=False)

    # ---------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 size as ``(rows, columns)``."""
        return tuple(int(s) for s in self.levels[0].shape[:2])

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 size as ``(width, height)`` (OpenSlide order)."""
        return self.shape[1], self.shape[0]

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """``(rows, columns)`` of every level."""
        return [tuple(int(s) for s in lev.shape[:2]) for lev in self.levels]

    @property
    def level_downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of each level (1.0 for level 0)."""
        h0, w0 = self.shape
        return [(h0 / h + w0 / w) / 2 for h, w in self.level_shapes]

    def level_mpp(self, level: int) -> float | None:
        """Pixel size of ``level`` in um/px, or None when the slide's is unknown."""
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample``.

        Reading that level and shrinking it further never up-samples.
        """
        ds = np.asarray(self.level_downsamples)
        ok = np.nonzero(ds <= downsample * 1.001)[0]
        return int(ok[-1]) if ok.size else 0

    # ------------------------------------------------------------------ pixels
    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read a region as a numpy array.

        Parameters
        ----------
        level : int
            Pyramid level (0 is full resolution).
        x, y : int
            Top-left corner in **level-0** pixels.
        w, h : int
            Size in pixels **of the requested level**.

        Returns
        -------
        (h, w, 3) uint8 array. Parts outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} does not exist (0..{self.level_count - 1})")
        if w < 0 or h < 0:
            raise SlideError(f"{self.path}: region size must be non-negative, got {w}x{h}")
        ds = self.level_downsamples[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        arr = self.levels[level]
        H, W = arr.shape[:2]
        out = np.full((h, w, 3), WHITE, np.uint8)
        y0, y1 = max(ly, 0), min(ly + h, H)
        x0, x1 = max(lx, 0), min(lx + w, W)
        if y1 > y0 and x1 > x0:
            direct = self._direct[level] if level < len(self._direct) else None
            try:
                # always computed here, in this process's threads: a dask.distributed Client made
                # the default scheduler must never get a region (its tasks hold file handles)
                if direct is None and self.fill_bad_tiles and self._checks_base_tiles():
                    # a computed level from checked stored tiles: damaged JPEG tiles never go unnoticed
                    block = self._read_filling(level, y0, y1, x0, x1)
                elif direct is None and (base_read := self._base_reader(level)) is not None and \
                        (y1 - y0) * (x1 - x0) * 4 ** (level - self.file_levels + 1) <= COMPUTED_DIRECT_MAX_PX:
                    # a level computed by coarsening, from the stored level's tile reader: the same
                    # 2x2 means as the dask graph, without its scheduling (an 800 px tile: 23 instead of 68 ms)
                    block = self._coarsened(level, y0, y1, x0, x1, base_read)
                elif direct is None:
                    block = arr[y0:y1, x0:x1].compute(scheduler="threads")
                elif self.fill_bad_tiles and getattr(direct, "fills_bad_tiles", False):
                    block = direct(y0, y1, x0, x1, check=True)  # damaged JPEG tiles are bad tiles too
                else:
                    block = direct(y0, y1, x0, x1)
                out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = block
            except SlideError:
                raise
            except Exception as exc:  # a codec or I/O error from deep inside
                if self.fill_bad_tiles:
                    out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read_filling(level, y0, y1, x0, x1)
                    return out
                raise SlideError(
                    f"{self.path}: could not decode level {level} at level-0 ({x}, {y}): "
                    f"{type(exc).__name__}: {exc}. The file may be truncated or corrupt."
                ) from exc
        return out

    def _base_reader(self, level: int):
        """The stored level's tile reader when ``level`` is computed from it by coarsening, else None."""
        base = self.file_levels - 1
        if level <= base or base >= len(self._direct):
            return None
        return self._direct[base]

    def _checks_base_tiles(self) -> bool:
        """Whether the last stored level is read by a tile reader that checks and fills tiles."""
        base = self.file_levels - 1
        direct = self._direct[base] if base < len(self._direct) else None
        return bool(getattr(direct, "fills_bad_tiles", False))

    def _bad(self, level, y, x, h, w, exc) -> None:
        ds = self.level_downsamples[level]
        self.bad_tiles.append({"level": level, "x": int(x * ds), "y": int(y * ds), "w": int(np.ceil(w * ds)),
                               "h": int(np.ceil(h * ds)),
                               "error": f"could not decode level {level} tile at level-0 ({int(x * ds)}, "
                                        f"{int(y * ds)}): {type(exc).__name__}: {exc}"})

    def _read_filling(self, level, y0, y1, x0, x1) -> np.ndarray:
        """Level pixels ``[y0:y1, x0:x1]`` with the file tiles that cannot be decoded left white
        (and recorded): a bad tile invalidates its own pixels only. A stored level reads tile by
        tile; a level computed by coarsening is recomputed from the last stored level read so."""
        direct = self._direct[level] if level < len(self._direct) else None
        if getattr(direct, "fills_bad_tiles", False):
            try:
                return direct(y0, y1, x0, x1, on_bad=lambda ty, tx, th, tw, exc: self._bad(level, ty, tx, th, tw, exc))
            except Exception:  # noqa: BLE001 -- not a tile error (the tile table itself): chunk by chunk
                pass
        base = self.file_levels - 1
        if level <= base:  # a stored level without a tile reader: chunk by chunk
            arr = self.levels[level]
            out = np.full((y1 - y0, x1 - x0, 3), WHITE, np.uint8)
            ys, xs = np.cumsum((0,) + arr.chunks[0]), np.cumsum((0,) + arr.chunks[1])
            for ca, cb in zip(ys[:-1], ys[1:], strict=True):
                for ra, rb in zip(xs[:-1], xs[1:], strict=True):
                    a, b, c, d = max(ca, y0), min(cb, y1), max(ra, x0), min(rb, x1)
                    if b <= a or d <= c:
                        continue
                    try:
                        out[a - y0 : b - y0, c - x0 : d - x0] = arr[a:b, c:d].compute(scheduler="threads")
                    except Exception as exc:  # noqa: BLE001
                        self._bad(level, int(ca), int(ra), int(cb - ca), int(rb - ra), exc)
            return out
        return self._coarsened(level, y0, y1, x0, x1, lambda *box: self._read_filling(base, *box))

    def _coarsened(self, level, y0, y1, x0, x1, read) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of a level computed by coarsening: the last stored level's
        pixels under them (``read(y0, y1, x0, x1)`` in its coordinates), 2x2-averaged once per level
        above it, as the level's dask graph computes them."""
        up = level - (self.file_levels - 1)
        k = 2**up
        fine = read(y0 * k, y1 * k, x0 * k, x1 * k)
        for _ in range(up):
            fine = mean2x2(fine)
        return fine

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """An RGB overview whose longer side is at most ``max_size`` pixels.

        The smallest level at least ``max_size`` px, shrunk in uint8 by Pillow's box filter
        (an average over the source pixels: anti-aliased, and far cheaper than a float Gaussian).
        """
        from PIL import Image

        sides = [max(s) for s in self.level_shapes]
        fits = [i for i, s in enumerate(sides) if s >= max_size]
        level = fits[-1] if fits else self.level_count - 1
        img = self.read_region(level, 0, 0, self.level_shapes[level][1], self.level_shapes[level][0])
        scale = max_size / max(img.shape[:2])
        if scale < 1:
            h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
            img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.Resampling.BOX))
        return img

    # ------------------------------------------------------- associated images
    @property
    def associated_images(self) -> list[str]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail``)."""
        return sorted(self._associated)

    def associated_image(self, name: str) -> np.ndarray:
        """Read an associated image (``label``, ``macro``, ...) as RGB uint8."""
        try:
            loader = self._associated[name]
        except KeyError:
            raise SlideError(
                f"{self.path}: has no associated image {name!r}; it has {self.associated_images or 'none'}"
            ) from None
        return loader()

    # --------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the file handles. The dask arrays cannot be computed after this."""
        while self._closers:
            self._closers.pop()()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def info(self) -> dict:
        """Plain-data description (JSON-serialisable)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "shape": list(self.shape),
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "level_shapes": [list(s) for s in self.level_shapes],
            "level_downsamples": [round(d, 4) for d in self.level_downsamples],
            "file_levels": self.file_levels,
            "associated_images": self.associated_images,
        }


def open_slide(path, mpp: float | None = None) -> Slide:
    """Open a whole-slide image lazily.

    Parameters
    ----------
    path : str or Path
        An Aperio SVS, Hamamatsu NDPI, OME-TIFF, tiled or plain TIFF, an
        OME-Zarr folder, or a PNG/JPEG image.
    mpp : float, optional
        Pixel size in um/px; overrides what the file says (or supplies it
        when the file says nothing).

    Returns
    -------
    Slide

    Raises
    ------
    SlideError
        With a message naming the file, what is wrong and what to do.
    """
    from . import _backends

    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such file or folder")
    if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
        raise SlideError(f"{path}: the pixel size override must be a positive number, got {mpp!r}")
    try:
        slide = _backends.open_any(path)
    except SlideError:
        raise
    except MemoryError as exc:
        raise SlideError(f"{path}: too large to read into memory ({exc})") from exc
    except Exception as exc:  # anything a library raised that we did not foresee
        raise SlideError(f"{path}: cannot be read as a slide: {type(exc).__name__}: {exc}") from exc
    try:
        _validate(slide)
        slide.levels = extend_pyramid(slide.levels)
    except Exception:
        slide.close()
        raise
    if mpp is not None:
        slide.mpp, slide.mpp_source = float(mpp), "override"
    elif slide.mpp is not None and not PLAUSIBLE_MPP[0] <= slide.mpp <= PLAUSIBLE_MPP[1]:
        warnings.warn(
            f"{path}: recorded pixel size {slide.mpp:.4g} um/px is implausible for a slide "
            "(a scanner default?); treating it as unknown. Pass mpp= to set it.",
            SlideWarning,
            stacklevel=2,
        )
        slide.mpp, slide.mpp_source = None, "unknown"
    return slide


def _validate(slide: Slide) -> None:
    if not slide.levels:
        raise SlideError(f"{slide.path}: contains no image")
    for lev in slide.levels:
        if lev.ndim != 3 or lev.shape[2] != 3 or lev.dtype != np.uint8:
            raise SlideError(
                f"{slide.path}: internal error, level is {lev.shape} {lev.dtype}, expected (rows, cols, 3) uint8"
            )
    h, w = slide.shape
    if h > MAX_SIDE or w > MAX_SIDE or h < 1 or w < 1:
        raise SlideError(
            f"{slide.path}: claims an image of {w} x {h} pixels, which no slide has "
            f"(limit {MAX_SIDE} px a side); the file is corrupt or not a slide"
        )


def extend_pyramid(levels: list[da.Array], smallest: int = SMALLEST_LEVEL, chunk: int = 1024) -> list[da.Array]:
    """Add lazily coarsened levels (2x2 mean) until the smallest fits ``smallest``.

    A single-level image thus gets a pyramid napari can display; an existing
    pyramid that stops early is completed.

    Examples
    --------
    >>> base = da.zeros((5000, 3000, 3), dtype=np.uint8, chunks=(256, 256, 3))
    >>> [lev.shape[:2] for lev in extend_pyramid([base])]
    [(5000, 3000), (2500, 1500), (1250, 750)]
    """
    levels = list(levels)
    while max(levels[-1].shape[:2]) > smallest:
        levels.append(coarsen2(levels[-1], chunk))
    return levels


def coarsen2(level: da.Array, chunk: int = 1024) -> da.Array:
    """Halve a ``(rows, cols, 3)`` uint8 dask array by 2x2 averaging."""
    h, w = (s // 2 * 2 for s in level.shape[:2])
    even = level[:h, :w].rechunk({0: min(chunk, h), 1: min(chunk, w), 2: -1})
    # rechunk rounds chunks to even sizes only when the edge chunk is odd: h, w are even
    return da.map_blocks(mean2x2, even, dtype=np.uint8, chunks=tuple(tuple(c // 2 for c in cs) for cs in even.chunks[:2]) + (even.chunks[2],))



