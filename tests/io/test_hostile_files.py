"""Issue 18.2: small files that claim huge images are refused at open, in milliseconds, with the
real reason; plain images are decoded within a bounded, documented pixel limit."""

import io
import struct
import time
import zlib

import numpy as np
import pytest

from napari_mitosis.io import SlideError, open_slide
from napari_mitosis.io import _backends

from .hostile import raw_tiff

FAST = 2.0  # seconds: refusing reads headers only (generous for a busy machine)


def _refused_fast(path, match):
    t = time.perf_counter()
    with pytest.raises(SlideError, match=match) as info:
        open_slide(path)
    assert time.perf_counter() - t < FAST
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("side", [60_000, 250_000, 999_000, 999_999])
@pytest.mark.parametrize("layout", ["tile256", "tile512", "strips", "strip_rows1", "bigtiff"])
def test_a_small_tiff_claiming_a_huge_image_is_refused_at_once(tmp_path, side, layout):
    kw = {"tile256": dict(tile=(256, 256)), "tile512": dict(tile=(512, 512)),
          "strips": dict(rows_per_strip=64), "strip_rows1": dict(rows_per_strip=1),
          "bigtiff": dict(tile=(256, 256), bigtiff=True)}[layout]
    path = raw_tiff(tmp_path / "claim.tif", side, side, n_chunks=4, **kw)
    assert path.stat().st_size < 10_000
    _refused_fast(path, f"claims an image of {side} x {side} pixels.*but the file lists 4")


@pytest.mark.parametrize("shape", [(999_000, 999_000), (100_000, 40_000), (20_000, 20_000)])
def test_one_huge_tile_or_strip_from_a_few_bytes_is_a_bomb(tmp_path, shape):
    h, w = shape
    one_tile = raw_tiff(tmp_path / "tile.tif", w, h, tile=(h + (-h) % 16, w + (-w) % 16), n_chunks=1)
    _refused_fast(one_tile, "decompression bomb")
    one_strip = raw_tiff(tmp_path / "strip.tif", w, h, n_chunks=1)
    _refused_fast(one_strip, "decompression bomb")


def test_many_stored_tiles_that_each_claim_too_much_are_a_bomb(tmp_path):
    # a consistent tile table, but 4096 px tiles (48 MiB each) from 26 bytes each
    path = raw_tiff(tmp_path / "many.tif", 4096 * 8, 4096 * 8, tile=(4096, 4096), n_chunks=64)
    _refused_fast(path, "decompression bomb")


def test_honest_small_raw_tiffs_still_open(tmp_path):
    patch = zlib.compress(np.full((256, 256, 3), 230, np.uint8).tobytes())
    path = raw_tiff(tmp_path / "ok.tif", 512, 512, tile=(256, 256), n_chunks=4, chunk=patch)
    with open_slide(path) as slide:
        assert slide.shape == (512, 512)
        assert (slide.read_region(0, 0, 0, 512, 512) == 230).all()
    blank = np.full((64, 1024, 3), 255, np.uint8)  # blank glass: the best compression there is
    path = raw_tiff(tmp_path / "strips.tif", 1024, 256, rows_per_strip=64, n_chunks=4,
                    chunk=zlib.compress(blank.tobytes(), 9))
    with open_slide(path) as slide:
        assert slide.shape == (256, 1024)


# ------------------------------------------------------------------------- plain images
def _jpeg(w=64, h=64):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _claim_jpeg(path, w, h):
    data = bytearray(_jpeg())
    i = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(data))
    return path


def _claim_png(path, w, h):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make", [_claim_jpeg, _claim_png])
@pytest.mark.parametrize("side", [12_000, 30_000, 65_000])
def test_a_small_plain_image_claiming_many_pixels_is_refused_with_the_real_reason(tmp_path, make, side):
    path = make(tmp_path / f"claim{side}.{'jpg' if make is _claim_jpeg else 'png'}", side, side)
    msg = _refused_fast(path, "pixels")
    assert "corrupt" not in msg or "bomb" in msg
    if side * side > _backends.MAX_IMAGE_PIXELS:
        assert _backends.MAX_IMAGE_PIXELS_ENV in msg  # the option that raises the limit
    # the same answer every time: no process-wide state changes between the first and later files
    assert _refused_fast(path, "pixels") == msg


def test_the_policy_does_not_touch_pillows_global_limit(tmp_path):
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(SlideError):
        open_slide(_claim_jpeg(tmp_path / "big.jpg", 30_000, 30_000))
    assert Image.MAX_IMAGE_PIXELS == before


def test_the_plain_image_limit_is_an_option(tmp_path, monkeypatch, synth):
    from PIL import Image

    Image.fromarray(synth.render(0, 0, 300, 400)[0]).save(tmp_path / "ok.png")
    with open_slide(tmp_path / "ok.png") as slide:
        assert slide.shape == (300, 400)
    monkeypatch.setenv(_backends.MAX_IMAGE_PIXELS_ENV, "1000")
    with pytest.raises(SlideError, match=f"{_backends.MAX_IMAGE_PIXELS_ENV}=120000"):
        open_slide(tmp_path / "ok.png")
    monkeypatch.setenv(_backends.MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(SlideError, match="not a number"):
        open_slide(tmp_path / "ok.png")
