"""Format backends behind :func:`open_slide`: TIFF family, OME-Zarr, plain images."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import numpy as np

from ..errors import NapariMitosisError
from .slide import MAX_SIDE, PLAUSIBLE_MPP, Slide, SlideError

TIFF_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".btf", ".tf8", ".scn", ".bif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_UNIT_TO_UM = {
    "nm": 1e-3, "nanometer": 1e-3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "micrometer": 1.0, "microns": 1.0,
    "mm": 1e3, "millimeter": 1e3,
    "cm": 1e4, "centimeter": 1e4,
}  # fmt: skip


def open_any(path: Path) -> Slide:
    if path.is_dir():
        if _is_zarr(path):
            return open_ome_zarr(path)
        raise SlideError(f"{path}: is a folder but not an OME-Zarr image (no .zattrs or zarr.json)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise SlideError(f"{path}: the file is empty")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return open_tiff(path)
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        return open_image(path)
    suffix = "".join(path.suffixes[-2:]).lower()
    raise SlideError(
        f"{path}: unsupported format ({suffix or 'no extension'}); napari-mitosis reads SVS, NDPI, "
        "OME-TIFF, tiled TIFF, OME-Zarr, PNG and JPEG. Convert it, e.g. to OME-TIFF with bfconvert."
    )


# ----------------------------------------------------------------------------- TIFF
def open_tiff(path: Path) -> Slide:
    import tifffile
    import zarr

    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:
        raise SlideError(f"{path}: not a readable TIFF, the file is truncated or corrupt ({exc})") from exc
    closers = [tf.close]
    try:
        if not tf.series:
            raise SlideError(f"{path}: the TIFF holds no image; the file is corrupt or truncated")
        series = tf.series[0]
        fmt = "svs" if tf.is_svs else "ndpi" if tf.is_ndpi else "ome-tiff" if tf.is_ome else "tiff"
        _check_tiff_series(path, tf, series)
        st = os.stat(path)
        size = st.st_size
        ident = (os.path.realpath(path), st.st_mtime_ns, size)  # a rewritten file gets new keys
        levels, direct = [], []
        for i, lev in enumerate(series.levels):
            _check_offsets(path, lev, size, i, fmt)
            store = series.aszarr(level=i)
            z = zarr.open(store, mode="r")
            if not hasattr(z, "shape"):  # a pyramid group: pick the level's array
                z = z[str(i)]
            # dask chunks of 2 x 2 file tiles: aligned to the tiles, a quarter of the tasks
            tile = z.chunks
            chunks = tuple(2 * c if ax in "YX" else c for ax, c in zip(lev.axes, tile, strict=True))
            arr = da.from_zarr(z, chunks=chunks, name=f"tiff-{path}-{st.st_mtime}-{i}", inline_array=True)
            levels.append(_merge_thin_strips(_to_rgb(path, arr, lev.axes)))
            # read_region of a plain RGB level decodes the file's tiles itself (tiled pages), or
            # slices the zarr store: no per-tile dask overhead
            rgb = lev.axes == "YXS" and z.shape[2] == 3
            direct.append((_tile_reader(path, lev, closers, _direct_reader(z), TILE_CACHE, (ident, i))
                           or _direct_reader(z))
                          if rgb else None)
        mpp, mpp_source, objective = _tiff_pixel_size(tf, series, fmt)
        associated = _tiff_associated(tf, fmt)
    except BaseException:
        for close in closers:
            close()
        raise
    return Slide(
        path=path,
        levels=levels,
        mpp=mpp,
        objective_power=objective,
        format=fmt,
        mpp_source=mpp_source,
        file_levels=len(levels),
        _associated=associated,
        _closers=closers,
        _direct=direct,
    )


#: Decoded tiles kept by the tiled-TIFF reader (tiles a read covers only in part), per process.
TILE_CACHE_BYTES = 48 * 2**20


class _TileCache:
    """A thread-safe LRU of decoded tiles, bounded in bytes, keyed by (level, tile index)."""

    def __init__(self, max_bytes: int):
        import threading
        from collections import OrderedDict

        self.max_bytes, self.bytes, self.hits, self.misses = int(max_bytes), 0, 0, 0
        self._d, self._lock = OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            tile = self._d.get(key)
            if tile is not None:
                self._d.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return tile

    def put(self, key, tile) -> None:
        if tile.nbytes > self.max_bytes:
            return
        tile.flags.writeable = False  # shared: readers copy out of it
        with self._lock:
            old = self._d.pop(key, None)
            self.bytes += tile.nbytes - (old.nbytes if old is not None else 0)
            self._d[key] = tile
            while self.bytes > self.max_bytes:
                self.bytes -= self._d.popitem(last=False)[1].nbytes

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.bytes = 0


#: One cache for the process: every open Slide of a file (analyze opens one per worker thread)
#: shares the decoded tiles of that file, and the bound holds whatever the number of slides.
TILE_CACHE = _TileCache(TILE_CACHE_BYTES)


class DamagedTile(NapariMitosisError, ValueError):
    """A tile whose compressed data decodes only with the decoder's warnings (garbage pixels).
    Not a SlideError: a slide that fills bad tiles records it and reads on."""


#: TIFF compression code of JPEG tiles.
_JPEG = 7


def check_jpeg_tile(data: bytes, tables: bytes | None, th: int, tw: int) -> None:
    """Raise :class:`DamagedTile` when libjpeg-turbo reports a warning on the tile's JPEG data
    ("Corrupt JPEG data", "Premature end of JPEG file"): such a tile decodes, but to garbage.
    The check decodes at 1/8 scale (the entropy decoding, where damage shows, without the
    inverse DCT at full size): about half a full decode. Damage that decodes without a warning
    (a flipped bit that still forms valid codes) cannot be told from the data."""
    import simplejpeg

    stream = bytes(tables[:-2]) + bytes(data[2:]) if tables else bytes(data)  # abbreviated: tables spliced in
    try:
        simplejpeg.decode_jpeg(stream, strict=True, min_height=max(th // 8, 1), min_width=max(tw // 8, 1))
    except ValueError as exc:
        raise DamagedTile(f"damaged JPEG data (libjpeg-turbo: {exc}); its pixels are not analysed") from None


def _tile_reader(path, level, closers, fallback, cache=None, index=0):
    """``read(y0, y1, x0, x1)`` of a tiled, chunky 8-bit RGB TIFF level that decodes the tiles
    under the region with tifffile's own codec in the calling thread, each once per call, from a
    file descriptor of its own (``os.pread``: no shared file position, no lock); None for other
    layouts (they go through the zarr store). About twice as fast as slicing the zarr store, and
    the codecs release the GIL, so tile threads decode in parallel. Nothing is read at open:
    the tile offsets and the descriptor come with the first read (``fallback``, the zarr
    reader, when the offsets do not match the tile grid).

    Tiles that a read covers only in part -- those under the border of a region, which the
    neighbouring region (the next task's halo) reads again -- are kept in a small LRU cache
    of decoded tiles (``cache``, keys ``(index, tile)``: the process-wide ``TILE_CACHE`` of
    ``TILE_CACHE_BYTES``, shared by threads, levels and the Slides open on the same file), like
    OpenSlide's tile cache; tiles wholly inside a read are not kept (no one asks again)."""
    import threading

    try:
        page = level.keyframe if hasattr(level, "keyframe") else level.pages[0]
        if len(level.pages) != 1 or not page.is_tiled or page.planarconfig != 1 or page.samplesperpixel != 3 \
                or page.bitspersample != 8 or page.imagedepth != 1 or page.tiledepth != 1:
            return None
        th, tw, H, W = int(page.tilelength), int(page.tilewidth), int(page.imagelength), int(page.imagewidth)
    except Exception:  # noqa: BLE001 -- anything unusual: the zarr store
        return None
    ntx = -(-W // tw)
    state, lock = {}, threading.Lock()

    def _tile(st, i, keep, check=False):
        check = check and st["jpeg"]
        keep = keep and cache is not None
        key = (index, i, "checked") if check else (index, i)  # a checked read never trusts an unchecked tile
        seg = cache.get(key) if keep else None
        if seg is None:
            data = os.pread(st["fd"], int(st["counts"][i]), int(st["offsets"][i]))
            if check:
                check_jpeg_tile(data, st["tables"], th, tw)
            seg, _, _ = st["decode"](data, i, jpegtables=st["tables"])
            seg = np.asarray(seg).reshape(th, tw, -1)
            if keep:
                cache.put(key, seg)
        return seg

    def _init():
        with lock:
            if not state:
                offsets = np.asarray(page.dataoffsets, np.int64)
                counts = np.asarray(page.databytecounts, np.int64)
                if len(offsets) != ntx * -(-H // th) or len(counts) != len(offsets):
                    state["fallback"] = True
                    return state
                fd = os.open(path, os.O_RDONLY)
                closers.append(lambda: os.close(fd))
                state.update(fallback=False, fd=fd, offsets=offsets, counts=counts, decode=page.decode,
                             tables=page.jpegtables, jpeg=int(page.compression) == _JPEG)
        return state

    def read(y0, y1, x0, x1, on_bad=None, check=False):
        """``on_bad(ty0, tx0, th, tw, exc)``: called for a tile that cannot be decoded, whose
        pixels are then left white (without it, the error is raised). ``check`` (implied by
        ``on_bad``): JPEG tiles that decode only with warnings are errors too (:class:`DamagedTile`)."""
        st = state or _init()
        if st["fallback"]:
            return fallback(y0, y1, x0, x1)
        check = check or on_bad is not None
        counts = st["counts"]
        out = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)  # empty tiles: 0, as the zarr store fills them
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                i = ty * ntx + tx
                if counts[i] <= 0:
                    continue
                ya, yb = max(y0, ty * th), min(y1, (ty + 1) * th)
                xa, xb = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                try:
                    seg = _tile(st, i, keep=(yb - ya) * (xb - xa) < th * tw, check=check)
                except Exception as exc:
                    if on_bad is None:
                        raise
                    on_bad(ty * th, tx * tw, th, tw, exc)
                    out[ya - y0 : yb - y0, xa - x0 : xb - x0] = 255
                    continue
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = seg[ya - ty * th : yb - ty * th, xa - tx * tw : xb - tx * tw, :3]
        return out

    read.fills_bad_tiles = True
    return read


def _direct_reader(z):
    def read(y0, y1, x0, x1):
        return np.asarray(z[y0:y1, x0:x1])

    return read


def _check_tiff_series(path, tf, series):
    shape = dict(zip(series.axes, series.shape, strict=True))
    h, w = shape.get("Y", 0), shape.get("X", 0)
    if h > MAX_SIDE or w > MAX_SIDE:
        raise SlideError(
            f"{path}: claims an image of {w} x {h} pixels, which no slide has; the file is corrupt or not a slide"
        )
    if series.dtype != np.uint8:
        bits = np.dtype(series.dtype).itemsize * 8
        raise SlideError(
            f"{path}: {bits}-bit {series.dtype} pixels; napari-mitosis reads 8-bit RGB bright-field slides. "
            "Convert it to 8-bit RGB (e.g. with QuPath or bfconvert) first."
        )
    samples = shape.get("S", shape.get("C", 1))
    if samples not in (3, 4):
        what = "grayscale" if samples == 1 else f"{samples}-channel"
        raise SlideError(
            f"{path}: a {what} image; napari-mitosis needs RGB bright-field (H&E) slides. "
            "Fluorescence or grayscale images are not supported."
        )


#: A compressed tile or strip larger than this when decoded (bytes) must also decode from a
#: plausible number of stored bytes (:data:`MAX_CHUNK_RATIO`); smaller ones are always read.
BIG_CHUNK_BYTES = 64 * 2**20
#: Decoded / stored bytes of one big chunk: deflate cannot exceed ~1032, JPEG of blank glass ~400.
MAX_CHUNK_RATIO = 2000
#: Decoded / stored bytes of a level's stored chunks, when they decode to more than 256 MiB.
MAX_LEVEL_RATIO = 5000


def _check_offsets(path, level, file_size, index, fmt="tiff"):
    """Check a level's layout against the bytes the file really holds, in milliseconds and
    before anything is decoded or any dask graph is built:

    - a truncated file has tiles that point past its end: say so now, not mid-view;
    - the claimed image size must match the number of tiles (or strips) the file lists:
      a 7 KB file claiming 999,000 x 999,000 px in 256 px tiles lists 4 tiles, not 15 million;
    - the decoded size must be plausible for the bytes stored (no decompression bombs: one
      huge tile or strip claimed from a few bytes).
    """
    for page in level.pages:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.size == 0:
            raise SlideError(f"{path}: level {index} has no image data; the file is corrupt")
        if counts.size != offsets.size or (counts < 0).any() or (offsets < 0).any():
            raise SlideError(f"{path}: level {index} has an inconsistent tile table; the file is corrupt")
        present = counts > 0
        if present.any() and int((offsets + counts)[present].max()) > file_size:
            raise SlideError(
                f"{path}: level {index} refers to data past the end of the file ({file_size} bytes): "
                "the file is truncated (an interrupted copy or download?). Copy it again."
            )
        _check_chunk_layout(path, page, offsets.size, counts, present, index, fmt)


def _check_chunk_layout(path, page, n_listed, counts, present, index, fmt):
    H, W = int(page.imagelength), int(page.imagewidth)
    D = int(getattr(page, "imagedepth", 1) or 1)
    spp = int(page.samplesperpixel or 1)
    planes = spp if int(page.planarconfig) == 2 else 1
    itemsize = max(1, int(page.bitspersample or 8) // 8)
    if page.is_tiled:
        th, tw = int(page.tilelength), int(page.tilewidth)
        td = int(getattr(page, "tiledepth", 1) or 1)
        if th < 1 or tw < 1 or td < 1:
            raise SlideError(f"{path}: level {index} has tiles of {tw} x {th} px; the file is corrupt")
        expected = -(-H // th) * -(-W // tw) * -(-D // td) * planes
        chunk_bytes = th * tw * td * (spp // planes) * itemsize
        layout = f"{expected} tiles of {tw} x {th} px"
    else:
        rps = int(page.rowsperstrip or H) or H
        rps = max(1, min(rps, H))
        expected = -(-H // rps) * D * planes
        chunk_bytes = rps * W * (spp // planes) * itemsize
        layout = f"{expected} strips of {rps} rows"
    if fmt != "ndpi" and n_listed != expected:  # tifffile gives NDPI's JPEG its own virtual tiles
        raise SlideError(
            f"{path}: level {index} claims an image of {W} x {H} pixels, which needs {layout}, "
            f"but the file lists {n_listed}; the file is corrupt or not a slide"
        )
    if int(page.compression) == 1 or not present.any():
        return  # uncompressed: every byte decoded is a byte stored (and the offsets are checked)
    if chunk_bytes > BIG_CHUNK_BYTES:
        worst = int(counts[present].min())
        if chunk_bytes > MAX_CHUNK_RATIO * worst:
            raise SlideError(
                f"{path}: level {index} has a {'tile' if page.is_tiled else 'strip'} that would decode to "
                f"{chunk_bytes / 2**20:.0f} MiB from {worst} stored bytes "
                f"(more than {MAX_CHUNK_RATIO}:1): a decompression bomb or a corrupt file; refused"
            )
    decoded = int(present.sum()) * chunk_bytes
    stored = int(counts[present].sum())
    if decoded > 256 * 2**20 and decoded > MAX_LEVEL_RATIO * stored:
        raise SlideError(
            f"{path}: level {index} claims {W} x {H} pixels that would decode to {decoded / 2**30:.1f} GiB "
            f"from {stored} stored bytes (more than {MAX_LEVEL_RATIO}:1): a decompression bomb or a "
            "corrupt file; refused"
        )


def _to_rgb(path, arr: da.Array, axes: str) -> da.Array:
    """Reorder a tifffile/OME array to ``(Y, X, 3)``, dropping singleton axes."""
    index = []
    keep = []
    for ax in axes:
        if ax in "YXSC":
            index.append(slice(None))
            keep.append(ax)
        else:
            index.append(0)  # first T / Z / I plane
    arr = arr[tuple(index)]
    if "S" not in keep and "C" in keep:
        keep = ["S" if a == "C" else a for a in keep]
    elif "S" in keep and "C" in keep:  # S samples, C channels: take first channel
        arr = arr[tuple(0 if a == "C" else slice(None) for a in keep)]
        keep.remove("C")
    order = [keep.index(a) for a in "YXS"]
    arr = arr.transpose(order)
    if arr.shape[2] == 4:  # RGBA: composite over white glass
        arr = da.map_blocks(_rgba_over_white, arr.rechunk({2: -1}), dtype=np.uint8, chunks=arr.chunks[:2] + ((3,),))
    return arr.rechunk({2: -1})


def _merge_thin_strips(arr: da.Array, rows: int = 512) -> da.Array:
    """Stripped (untiled) TIFFs come as one chunk per strip, often a few rows each:
    merge whole strips into chunks of about ``rows`` rows (still strip-aligned)."""
    strip = arr.chunks[0][0]
    if strip >= rows or len(arr.chunks[1]) > 1:
        return arr
    return arr.rechunk({0: max(1, rows // strip) * strip})


def _rgba_over_white(block):
    rgb = block[..., :3].astype(np.uint16)
    a = block[..., 3:4].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _tiff_pixel_size(tf, series, fmt):
    """(mpp, source, objective power) from SVS, OME-XML, NDPI or resolution tags."""
    page = tf.pages.first if hasattr(tf.pages, "first") else tf.pages[0]
    objective = None
    if fmt == "svs":
        meta = _svs_description(page.description)
        objective = _float(meta.get("AppMag"))
        mpp = _float(meta.get("MPP"))
        if mpp:
            return mpp, "svs", objective
    if fmt == "ome-tiff":
        mpp, objective = _ome_xml_pixel_size(tf.ome_metadata)
        if mpp:
            return mpp, "ome", objective
    if fmt == "ndpi":
        tags = getattr(page, "ndpi_tags", None) or {}
        objective = _float(tags.get("Magnification"))
    mpp = _resolution_tags_mpp(page, tf)
    if mpp:
        return mpp, "resolution-tags", objective
    return None, "unknown", objective


def _svs_description(description: str) -> dict:
    """``key = value`` pairs of an Aperio ImageDescription (``...|MPP = 0.499|AppMag = 20``)."""
    out = {}
    for part in (description or "").split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _ome_xml_pixel_size(xml: str | None):
    if not xml:
        return None, None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    images = [el for el in root.iter() if el.tag.endswith("}Image") or el.tag == "Image"]
    image = images[0] if images else None  # we read the first series, the first Image
    mpp = objective = None
    if image is not None:
        for pixels in image:
            if pixels.tag.endswith("Pixels"):
                size = _float(pixels.get("PhysicalSizeX"))
                unit = pixels.get("PhysicalSizeXUnit", "µm")
                if size and unit in _UNIT_TO_UM:
                    mpp = size * _UNIT_TO_UM[unit]
    for el in root.iter():
        if el.tag.endswith("Objective"):
            objective = _float(el.get("NominalMagnification"))
            break
    return mpp, objective


def _resolution_tags_mpp(page, tf):
    tags = page.tags
    xres = tags.get("XResolution")
    unit = tags.get("ResolutionUnit")
    if xres is None:
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if not num or not den:
        return None
    px_per_unit = num / den
    unit_value = int(unit.value) if unit is not None else 2
    if unit_value == 3:  # centimetre
        return 1e4 / px_per_unit
    if unit_value == 2:  # inch
        return 25400.0 / px_per_unit
    ij = tf.imagej_metadata or {}
    if str(ij.get("unit", "")).lower() in _UNIT_TO_UM:  # ImageJ: unit NONE + 'unit' key
        return _UNIT_TO_UM[str(ij["unit"]).lower()] / px_per_unit
    return None


def _tiff_associated(tf, fmt):
    out = {}
    if fmt not in ("svs", "ndpi"):
        return out
    for index, s in enumerate(tf.series[1:], start=1):
        name = (s.name or "").strip().lower()
        if name in ("thumbnail", "label", "macro"):
            out[name] = _series_reader(tf, index)
    return out


def _series_reader(tf, index):
    def read():
        img = tf.series[index].asarray()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8)

    return read


def _float(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


# -------------------------------------------------------------------------- OME-Zarr
def _is_zarr(path: Path) -> bool:
    return any((path / f).exists() for f in (".zattrs", "zarr.json", ".zgroup"))


def open_ome_zarr(path: Path) -> Slide:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        raise SlideError(f"{path}: not a readable Zarr group ({exc})") from exc
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise SlideError(f"{path}: a Zarr group without OME-NGFF 'multiscales' metadata; not an OME-Zarr image")
    ms = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", ["t", "c", "z", "y", "x"])]
    units = {a["name"]: a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict)}
    levels, scales = [], []
    for i, ds in enumerate(ms["datasets"]):
        arr = group[ds["path"]]
        if arr.dtype != np.uint8:
            raise SlideError(
                f"{path}: {arr.dtype} pixels; napari-mitosis reads 8-bit RGB bright-field slides. Convert to 8-bit RGB."
            )
        d = da.from_zarr(arr, name=f"omezarr-{path}-{i}", inline_array=True)
        ax = "".join({"c": "C", "y": "Y", "x": "X"}.get(a.lower(), "Q") for a in axes)
        if "C" not in ax or d.shape[ax.index("C")] not in (3, 4):
            n = d.shape[ax.index("C")] if "C" in ax else 1
            raise SlideError(f"{path}: a {n}-channel image; napari-mitosis needs RGB bright-field (H&E) slides.")
        levels.append(_to_rgb(path, d, ax))
        scale = None
        for t in ds.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = t["scale"]
        scales.append(scale)
    mpp = None
    if scales[0] is not None and "x" in [a.lower() for a in axes]:
        xi = [a.lower() for a in axes].index("x")
        unit = (units.get(axes[xi]) or "").lower()
        if unit in _UNIT_TO_UM:
            mpp = float(scales[0][xi]) * _UNIT_TO_UM[unit]
    return Slide(
        path=path,
        levels=levels,
        mpp=mpp,
        format="ome-zarr",
        mpp_source="ome-zarr" if mpp else "unknown",
        file_levels=len(levels),
    )


# ------------------------------------------------------------------- plain images
#: Plain (untiled) images are decoded whole: at most this many pixels by default (about 1 GB
#: of memory while decoding); the environment variable raises or lowers it.
MAX_IMAGE_PIXELS = 2**27
MAX_IMAGE_PIXELS_ENV = "NAPARI_MITOSIS_MAX_IMAGE_PIXELS"
#: Decoded / file bytes of a plain image over 16 Mpx: a blank PNG or JPEG stays far below.
MAX_IMAGE_RATIO = 5000


def max_image_pixels() -> int:
    """The plain-image pixel limit: ``NAPARI_MITOSIS_MAX_IMAGE_PIXELS`` or :data:`MAX_IMAGE_PIXELS`."""
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise SlideError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r} is not a number of pixels") from None
    if value < 1:
        raise SlideError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r} must be a positive number of pixels")
    return value


def _pil_open(path: Path, fh):
    """Open a PNG, JPEG or BMP with its Pillow plugin directly: the header only, and without
    Pillow's process-wide decompression-bomb check (napari-mitosis applies its own policy,
    :func:`max_image_pixels`, and never changes ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin

    head = fh.read(8)
    fh.seek(0)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        cls = PngImagePlugin.PngImageFile
    elif head[:3] == b"\xff\xd8\xff":
        cls = JpegImagePlugin.JpegImageFile
    else:
        cls = BmpImagePlugin.BmpImageFile
    return cls(fh, str(path))


def open_image(path: Path) -> Slide:
    """PNG / JPEG / BMP: decoded once into memory (they are not tiled), pyramid built lazily.
    The claimed size is checked against :func:`max_image_pixels` and the file's size before
    anything is decoded, so memory stays bounded whatever the header claims."""
    limit = max_image_pixels()
    file_size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh, _pil_open(path, fh) as im:
            w, h = im.size
            if w > MAX_SIDE or h > MAX_SIDE or w < 1 or h < 1:
                raise SlideError(f"{path}: claims an image of {w} x {h} pixels; the file is corrupt")
            if w * h > limit:
                raise SlideError(
                    f"{path}: a plain {im.format} image of {w} x {h} = {w * h:,} pixels, more than the "
                    f"{limit:,} napari-mitosis decodes from an untiled image (it is read whole, about "
                    f"{7 * w * h / 2**30:.1f} GiB of memory). Convert it to a tiled pyramidal TIFF "
                    f"(e.g. vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg), or raise the "
                    f"limit with the environment variable {MAX_IMAGE_PIXELS_ENV}={w * h}."
                )
            if w * h > 2**24 and 3 * w * h > MAX_IMAGE_RATIO * file_size:
                raise SlideError(
                    f"{path}: a {file_size}-byte file claims an image of {w} x {h} pixels "
                    f"(more than {MAX_IMAGE_RATIO}:1 compression): a decompression bomb or a corrupt file; refused"
                )
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise SlideError(
                    f"{path}: 16/32-bit pixels ({mode}); napari-mitosis reads 8-bit RGB bright-field images. "
                    "Convert it to 8-bit RGB first."
                )
            if mode in ("L", "1", "LA"):
                raise SlideError(
                    f"{path}: a grayscale image; napari-mitosis needs RGB bright-field (H&E) images."
                )
            im.load()
            if mode == "RGBA" or (mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"))
                rgb = _rgba_over_white(rgba)
            else:
                rgb = np.asarray(im if mode == "RGB" else im.convert("RGB"))
            dpi = im.info.get("dpi")
    except SlideError:
        raise
    except MemoryError as exc:
        raise SlideError(f"{path}: not enough memory to decode this {w} x {h} image ({exc})") from exc
    except Exception as exc:
        raise SlideError(f"{path}: cannot decode the image, it is truncated or corrupt ({exc})") from exc
    mpp = 25400.0 / float(dpi[0]) if dpi and _float(dpi[0]) else None
    if mpp is not None and not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        mpp = None  # 72 or 96 dpi: a screen default, not a pixel size
    base = da.from_array(rgb, chunks=(1024, 1024, 3), name=f"image-{path}-{os.path.getmtime(path)}")
    return Slide(
        path=path,
        levels=[base],
        mpp=mpp,
        format="image",
        mpp_source="resolution-tags" if mpp else "unknown",
    )

