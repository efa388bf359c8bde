"""Bad input: a clear SlideError naming the file and the problem; the reader declines."""

import shutil

import numpy as np
import pytest
import tifffile

from napari_mitosis.io import SlideError, open_slide
from napari_mitosis.plugin.reader import get_reader


def _tiled(path, img, **kw):
    tifffile.imwrite(path, img, tile=(256, 256), **kw)
    return path


@pytest.fixture
def good_tiff(tmp_path, synth):
    return _tiled(tmp_path / "good.tif", synth.render(0, 0, 1024, 1024)[0], photometric="rgb", compression="jpeg")


def _assert_refused(path, match):
    with pytest.raises(SlideError, match=match) as info:
        open_slide(path)
    assert str(path) in str(info.value)  # the message names the file
    with pytest.warns(UserWarning, match="cannot open"):
        assert get_reader(str(path)) is None


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    assert get_reader(str(tmp_path / "nope.svs")) is None


def test_empty_file(tmp_path):
    (tmp_path / "empty.svs").write_bytes(b"")
    _assert_refused(tmp_path / "empty.svs", "empty")


def test_unsupported_format(tmp_path):
    (tmp_path / "notes.tif").write_text("this is not an image")
    _assert_refused(tmp_path / "notes.tif", "unsupported format")


def test_truncated_tiff(tmp_path, good_tiff):
    data = good_tiff.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    _assert_refused(cut, "truncated")


def test_garbage_after_tiff_magic(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _assert_refused(tmp_path / "garbage.tif", "corrupt|truncated|not a readable")


def test_absurd_dimensions(tmp_path, good_tiff):
    path = tmp_path / "absurd.tif"
    shutil.copy(good_tiff, path)
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tf.pages[0].tags["ImageWidth"].overwrite(3_000_000)
        tf.pages[0].tags["ImageLength"].overwrite(3_000_000)
    _assert_refused(path, "3000000 x 3000000 pixels, which no slide has")


def test_corrupt_tile_fails_on_read_with_a_clear_error(tmp_path, good_tiff):
    path = tmp_path / "badtile.tif"
    shutil.copy(good_tiff, path)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    with open(path, "r+b") as fh:  # overwrite one tile's JPEG data with zeros
        fh.seek(offset)
        fh.write(b"\x00" * count)
    with open_slide(path) as slide:
        ok = slide.read_region(0, 0, 0, 256, 256)  # other tiles still read
        assert ok.shape == (256, 256, 3)
        with pytest.raises(SlideError, match="could not decode.*corrupt"):
            slide.read_region(0, 256, 256, 512, 512)


def test_grayscale_tiff(tmp_path):
    _assert_refused(_tiled(tmp_path / "gray.tif", np.zeros((300, 300), np.uint8)), "grayscale")


def test_16bit_tiff(tmp_path):
    path = _tiled(tmp_path / "deep.tif", np.zeros((300, 300, 3), np.uint16), photometric="rgb")
    _assert_refused(path, "16-bit")


def test_grayscale_and_16bit_png(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "gray.png")
    _assert_refused(tmp_path / "gray.png", "grayscale")
    Image.fromarray(np.zeros((50, 50), np.uint16)).save(tmp_path / "deep.png")
    _assert_refused(tmp_path / "deep.png", "16")


def test_truncated_png(tmp_path, synth):
    from PIL import Image

    Image.fromarray(synth.render(0, 0, 200, 200)[0]).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path / "cut.png", "truncated or corrupt")


def test_folder_that_is_not_zarr(tmp_path):
    (tmp_path / "folder.zarr").mkdir()
    with pytest.raises(SlideError, match="not an OME-Zarr"):
        open_slide(tmp_path / "folder.zarr")


def test_bad_mpp_override(good_tiff):
    with pytest.raises(SlideError, match="positive"):
        open_slide(good_tiff, mpp=-1)
