"""The Slide API against the real slides of ../shared/data and generated ones."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_mitosis.io import Slide, SlideError, open_slide
from napari_mitosis.io.pyramid_writer import write_pyramid
from tests.conftest import shared_file

REAL = {
    # name: (format, shape, mpp, file levels, tile)
    "CMU-1-Small-Region.svs": ("svs", (2967, 2220), 0.499, 1, 240),
    "CMU-1-Small-Region_pyramid.generic.tif": ("tiff", (2967, 2220), 0.499, 3, 256),
    "CMU-1-Small-Region_pyramid.ome.tif": ("ome-tiff", (2967, 2220), 0.499, 3, 256),
    "TCGA-CR-7395-01A-01-TS1.svs": ("svs", (3567, 4443), None, 2, 256),  # JPEG 2000, no MPP recorded
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_slides_open_with_their_metadata(name):
    fmt, shape, mpp, nlevels, tile = REAL[name]
    with open_slide(shared_file("slides", name)) as slide:
        assert slide.format == fmt
        assert slide.shape == shape
        assert slide.mpp == pytest.approx(mpp, abs=1e-4) if mpp else slide.mpp is None
        assert slide.file_levels == nlevels
        assert slide.level_count >= nlevels  # completed by coarsening when the file stops early
        assert max(slide.level_shapes[-1]) <= 2048
        for lev in slide.levels:
            assert lev.dtype == np.uint8 and lev.shape[2] == 3
        # chunks are aligned to the file's tiles (2 x 2 tiles per dask task)
        assert slide.levels[0].chunksize[:2] == (2 * tile, 2 * tile)
        assert all(c % tile == 0 for c in slide.levels[0].chunks[0][:-1])
        assert slide.level_downsamples[0] == 1.0
        assert all(b > a for a, b in zip(slide.level_downsamples, slide.level_downsamples[1:]))


@pytest.mark.parametrize("name", sorted(REAL))
def test_read_region_equals_tifffile_decoding(name):
    path = shared_file("slides", name)
    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].pages[0]
        reference = page.asarray()[1000:1300, 700:1100]
    with open_slide(path) as slide:
        region = slide.read_region(0, 700, 1000, 400, 300)
    np.testing.assert_array_equal(region, reference)


def test_svs_associated_images_and_objective():
    with open_slide(shared_file("slides", "CMU-1-Small-Region.svs")) as slide:
        assert slide.objective_power == 20
        assert slide.associated_images == ["label", "macro", "thumbnail"]
        label = slide.associated_image("label")
        assert label.ndim == 3 and label.shape[2] == 3 and label.dtype == np.uint8
        with pytest.raises(SlideError, match="no associated image 'barcode'"):
            slide.associated_image("barcode")


def test_read_region_uses_level0_position_and_level_size(synthetic_slide_file):
    with open_slide(synthetic_slide_file) as slide:
        assert slide.level_count == 2
        level0 = slide.read_region(0, 400, 200, 512, 512)
        level1 = slide.read_region(1, 400, 200, 256, 256)
        # level 1 at the same level-0 position is the 2x2 mean of level 0 (JPEG aside)
        mean = level0.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(level1.astype(float) - mean).mean() < 4


def test_read_region_pads_outside_with_white(synthetic_slide_file):
    with open_slide(synthetic_slide_file) as slide:
        h, w = slide.shape
        region = slide.read_region(0, w - 10, h - 10, 30, 30)
        assert region.shape == (30, 30, 3)
        assert (region[10:, :] == 255).all() and (region[:, 10:] == 255).all()
        assert (slide.read_region(0, -100, -100, 20, 20) == 255).all()


def test_synthetic_ome_tiff_round_trip(synthetic_slide_file, synth):
    with open_slide(synthetic_slide_file) as slide:
        assert slide.format == "ome-tiff" and slide.mpp == 0.25 and slide.mpp_source == "ome"
        got = slide.read_region(0, 300, 200, 400, 400).astype(float)
    want = synth.render(200, 300, 400, 400)[0].astype(float)
    assert np.abs(got - want).mean() < 3  # JPEG quality 90


def test_generic_tiled_tiff_pixel_size_from_resolution_tags(tmp_path, synth):
    path = tmp_path / "generic.tif"
    write_pyramid(path, (700, 900), lambda y0, n: synth.render(y0, 0, n, 900)[0], mpp=0.5, ome=False, smallest=512)
    with open_slide(path) as slide:
        assert slide.format == "tiff"
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "resolution-tags"
        assert slide.file_levels == 2


def test_mpp_override_and_implausible_mpp(tmp_path, rgb_image):
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(path, rgb_image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.warns(UserWarning, match="implausible"):
        slide = open_slide(path)
    assert slide.mpp is None
    slide.close()
    with open_slide(path, mpp=0.3) as slide:
        assert slide.mpp == 0.3 and slide.mpp_source == "override"
        assert slide.level_mpp(0) == 0.3


def test_single_level_tiff_gets_a_lazy_pyramid(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (5000, 3000, 3), dtype=np.uint8)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, img, photometric="rgb", tile=(512, 512))
    with open_slide(path) as slide:
        assert slide.file_levels == 1
        assert slide.level_shapes == [(5000, 3000), (2500, 1500), (1250, 750)]
        lvl1 = slide.levels[1][:64, :64].compute()
        want = img[:128, :128].reshape(64, 2, 64, 2, 3).astype(float).mean(axis=(1, 3))
        assert np.abs(lvl1 - want).max() <= 1
        assert slide.levels[0].chunksize[:2] == (1024, 1024)  # 2 x 2 tiles of 512


def test_plain_images_png_and_jpeg(tmp_path, synth):
    from PIL import Image

    rgb = synth.render(0, 0, 300, 400)[0]
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    with open_slide(tmp_path / "a.png") as slide:
        assert slide.format == "image" and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 400, 300), rgb)
    with open_slide(tmp_path / "a.jpg", mpp=0.25) as slide:
        assert np.abs(slide.read_region(0, 0, 0, 400, 300).astype(int) - rgb).mean() < 3


def test_rgba_is_composited_over_white(tmp_path):
    from PIL import Image

    rgba = np.zeros((50, 60, 4), np.uint8)
    rgba[..., :3] = (200, 100, 150)
    rgba[:, :30, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with open_slide(tmp_path / "rgba.png") as slide:
        region = slide.read_region(0, 0, 0, 60, 50)
    assert (region[:, :30] == (200, 100, 150)).all()
    assert (region[:, 30:] == 255).all()


def _write_ome_zarr(path, rgb, mpp, channel_first=True, version="0.4"):
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    levels = [rgb, rgb[::2, ::2]]
    datasets = []
    for i, lev in enumerate(levels):
        data = np.moveaxis(lev, 2, 0) if channel_first else lev
        group.create_array(str(i), data=data, chunks=(3, 128, 128) if channel_first else (128, 128, 3))
        scale = [1.0, mpp * 2**i, mpp * 2**i] if channel_first else [mpp * 2**i, mpp * 2**i, 1.0]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    if not channel_first:
        axes = axes[1:] + axes[:1]
    multiscales = [{"axes": axes, "datasets": datasets}]
    if version == "0.4":  # NGFF 0.4: Zarr v2, metadata at the top of the attributes
        group.attrs["multiscales"] = [{"version": "0.4", **multiscales[0]}]
    else:  # NGFF 0.5: Zarr v3, metadata under "ome"
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}


@pytest.mark.parametrize(("channel_first", "version"), [(True, "0.4"), (False, "0.4"), (True, "0.5")])
def test_ome_zarr(tmp_path, synth, channel_first, version):
    rgb = synth.render(0, 0, 400, 500)[0]
    _write_ome_zarr(tmp_path / "img.ome.zarr", rgb, 0.5, channel_first, version)
    with open_slide(tmp_path / "img.ome.zarr") as slide:
        assert slide.format == "ome-zarr"
        assert slide.mpp == 0.5
        assert slide.level_shapes == [(400, 500), (200, 250)]
        assert slide.levels[0].chunksize[:2] == (128, 128)
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 500, 400), rgb)


def test_thumbnail_and_info(synthetic_slide_file):
    with open_slide(synthetic_slide_file) as slide:
        thumb = slide.thumbnail(256)
        assert max(thumb.shape[:2]) == 256 and thumb.dtype == np.uint8
        info = slide.info()
        assert info["mpp"] == 0.25 and info["shape"] == [1100, 1700]


def test_close_releases_the_file(synthetic_slide_file):
    slide = open_slide(synthetic_slide_file)
    assert isinstance(slide, Slide)
    with slide:
        pass
    assert not slide._closers  # closed exactly once, idempotent
    slide.close()


def test_stripped_tiff_chunks_are_whole_strips(tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (1000, 200, 3), dtype=np.uint8)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=8)
    with open_slide(path) as slide:
        assert slide.levels[0].chunks[0] == (512, 488)  # 64 whole strips, not 125 chunks of 8 rows
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 200, 1000), img)


def test_pyramid_writer_reports_progress_to_the_end(tmp_path, synth):
    seen = []
    write_pyramid(tmp_path / "p.ome.tif", (700, 900), lambda y0, n: synth.render(y0, 0, n, 900)[0], mpp=0.25,
                  smallest=256, progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))


def test_direct_and_lazy_reads_agree(synthetic_slide_file):
    """read_region decodes a tiled level's tiles itself; the pixels are those of the lazy
    (zarr/dask) level, inside tiles, across tile edges and at the image border, on every level."""
    with open_slide(synthetic_slide_file) as slide:
        assert all(d is not None and "_tile_reader" in d.__qualname__ for d in slide._direct[: slide.file_levels])
        for level in range(slide.file_levels):
            H, W = slide.levels[level].shape[:2]
            ds = slide.level_downsamples[level]
            for x, y, w, h in ((123, 77, 700, 500), (0, 0, 1, 1), (255, 255, 2, 2), (W - 300, H - 200, 300, 200)):
                x, y = max(x, 0), max(y, 0)
                w, h = min(w, W - x), min(h, H - y)
                direct = slide.read_region(level, round(x * ds), round(y * ds), w, h)
                lazy = slide.levels[level][y : y + h, x : x + w].compute()
                np.testing.assert_array_equal(direct, lazy)


def test_overlapping_reads_from_threads_share_decoded_border_tiles(synthetic_slide_file):
    """Regions that overlap (a tile's halo is its neighbour's core) reuse the decoded tiles under
    their borders, also across Slides open on the same file (analyze has one per thread): from
    several threads at once the pixels stay those of the lazy level, and writing into a returned
    region changes nothing that a later read returns."""
    from concurrent.futures import ThreadPoolExecutor

    from napari_mitosis.io._backends import TILE_CACHE

    TILE_CACHE.clear()
    with open_slide(synthetic_slide_file) as a, open_slide(synthetic_slide_file) as b:
        a.read_region(0, 100, 100, 300, 300)  # its border tiles are kept ...
        misses = TILE_CACHE.misses
        b.read_region(0, 100, 100, 300, 300)  # ... and the other Slide finds them
        assert TILE_CACHE.misses == misses and TILE_CACHE.hits > 0

    with open_slide(synthetic_slide_file) as slide:
        H, W = slide.levels[0].shape[:2]
        rng = np.random.default_rng(0)
        boxes = [(int(rng.integers(0, W - 300)), int(rng.integers(0, H - 300)), 300, 300) for _ in range(40)]
        boxes += [(x + 150, y, w, h) for x, y, w, h in boxes[:10] if x + 450 <= W]  # half on a previous one

        def read(box):
            x, y, w, h = box
            out = slide.read_region(0, x, y, w, h)
            same = np.array_equal(out, slide.levels[0][y : y + h, x : x + w].compute())
            out[:] = 7  # the caller owns what it gets
            return same

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(read, boxes * 2))


def test_tile_cache_is_bounded_in_bytes_and_forgets_the_least_recent():
    from napari_mitosis.io._backends import _TileCache

    cache = _TileCache(3 * 100)
    tiles = {k: np.full(100, k, np.uint8) for k in range(5)}
    for k in (0, 1, 2):
        cache.put(("level", k), tiles[k])
    assert cache.get(("level", 0)) is not None  # 0 is now the most recent
    cache.put(("level", 3), tiles[3])  # over budget: the least recent (1) goes
    assert cache.get(("level", 1)) is None and cache.bytes == 300
    assert [int(cache.get(("level", k))[0]) for k in (0, 2, 3)] == [0, 2, 3]
    with pytest.raises(ValueError):  # shared tiles are read-only
        cache.get(("level", 0))[0] = 9
    cache.put(("big", 0), np.zeros(301, np.uint8))  # larger than the whole budget: not kept
    assert cache.get(("big", 0)) is None and cache.bytes == 300


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"])
def test_levels_computed_by_coarsening_read_as_their_dask_arrays(name):
    """Levels the file does not store (2x2 means of the last stored one) read through the stored
    level's tile reader equal the lazily coarsened arrays napari displays, at odd offsets and
    across the slide's edge (white)."""
    with open_slide(shared_file("slides", name)) as slide:
        computed = range(slide.file_levels, slide.level_count)
        assert len(computed) >= 1
        for level in computed:
            arr = slide.levels[level]
            H, W = arr.shape[:2]
            ds = slide.level_downsamples[level]
            for x, y, w, h in ((3, 5, 301, 207), (W - 50, H - 40, 90, 70)):
                got = slide.read_region(level, int(round(x * ds)), int(round(y * ds)), w, h)
                want = np.full((h, w, 3), 255, np.uint8)
                inside = arr[y : min(y + h, H), x : min(x + w, W)].compute()
                want[: inside.shape[0], : inside.shape[1]] = inside
                np.testing.assert_array_equal(got, want)


def test_a_large_region_of_a_computed_level_streams_in_bounded_memory(monkeypatch):
    """An overview of a single-level slide (a computed level over the whole slide) is not read as
    one stored-level region (a 100k px slide would need tens of GB): above the limit it goes
    through the level's dask graph, with the same pixels; below it, one stored-level read."""
    import napari_mitosis.io.slide as slide_mod

    with open_slide(shared_file("slides", "CMU-1-Small-Region.svs")) as slide:
        level = slide.level_count - 1
        h, w = slide.level_shapes[level]
        base = slide._direct[0]
        sizes = []

        def spy(*a, **k):
            sizes.append((a[1] - a[0]) * (a[3] - a[2]))
            return base(*a, **k)

        slide._direct[0] = spy
        small = slide.read_region(level, 0, 0, w, h)  # the whole of CMU-1 is under the limit: one read
        assert max(sizes) >= (2 * h) * (2 * w) * 4 ** (level - 1)
        sizes.clear()
        monkeypatch.setattr(slide_mod, "COMPUTED_DIRECT_MAX_PX", 1000)  # as if the slide were huge
        np.testing.assert_array_equal(slide.read_region(level, 0, 0, w, h), small)
        assert not sizes or max(sizes) <= 1000
