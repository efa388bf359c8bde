"""Issue 18.4: a file tile that cannot be decoded costs its own pixels only: the tissue mask is
still made, the analysis tiles around it still run, and the tile is reported once. A JPEG tile
whose data are damaged but still decode (to garbage, with libjpeg's warnings) is such a tile too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_mitosis.io import open_slide
from napari_mitosis.io.detections import read_csv
from napari_mitosis.pipeline.analyze import analyze_task
from napari_mitosis.pipeline.detect import make_params
from napari_mitosis.pipeline.progress import run

TILE = 256


@pytest.fixture(scope="module")
def params():
    return make_params(device="cpu", tile_um=140, candidates="nuclei",
                       thresholds={"detect_screen_dark": 1.2, "detect_mitotic_figure": 0.55})


def _write(path, img):
    tifffile.imwrite(path, img, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    return path


def _damage(path, index, how):
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        off, n = int(page.dataoffsets[index]), int(page.databytecounts[index])
    with open(path, "r+b") as fh:
        if how == "garbled":  # the second half of the data lost (a file written in part): it still decodes, to garbage
            fh.seek(off + n // 2)
            fh.write(b"\0" * (n - 2 - n // 2))  # (its end-of-image marker kept)
            return
        fh.seek(off)
        fh.write(b"\0" * n if how == "zeros" else b"\xff\xd8\xff\xd9" + b"\x00" * (n - 4))


@pytest.mark.parametrize("how", ["zeros", "no_image", "garbled"])
def test_a_bad_tile_costs_its_own_pixels_only(tmp_path, synth, params, how):
    img = synth.render(0, 0, 1000, 2200)[0]  # single level: the tissue mask reads a computed level
    good = _write(tmp_path / "good.tif", img)
    bad = _write(tmp_path / "bad.tif", img)
    ntx = -(-img.shape[1] // TILE)
    ty, tx = 1, 4
    _damage(bad, ty * ntx + tx, how)
    with open_slide(bad) as slide:
        assert slide.file_levels == 1 and slide.level_count > 1
    ref = run(analyze_task([good], tmp_path / "ref", params=params)).iloc[0]
    got = run(analyze_task([bad], tmp_path / "out", params=params)).iloc[0]
    assert ref.status == "ok"
    assert got.status == "partial" and got.failed_tiles == 1, got.message
    assert "no tissue mask" not in got.message
    failed = pd.read_csv(tmp_path / "out" / "bad" / "failed_tiles.csv")
    assert failed[["x", "y", "w", "h"]].values.tolist() == [[tx * TILE, ty * TILE, TILE, TILE]]
    tile_mm2 = (TILE * 0.25 / 1000) ** 2
    assert ref.tissue_mm2 - 2 * tile_mm2 <= got.tissue_mm2 <= ref.tissue_mm2 + 1e-9
    assert got.tiles == ref.tiles
    # detections away from the bad tile are those of the undamaged slide
    x0, y0, margin = tx * TILE, ty * TILE, 150

    def away(df):
        far = ~((df.x > x0 - margin) & (df.x < x0 + TILE + margin) & (df.y > y0 - margin) & (df.y < y0 + TILE + margin))
        return df[far].sort_values(["x", "y"]).reset_index(drop=True)

    a = away(read_csv(tmp_path / "ref" / "good" / "detections.csv"))
    b = away(read_csv(tmp_path / "out" / "bad" / "detections.csv"))
    assert list(a["class"]) == list(b["class"])
    assert np.allclose(a[["x", "y"]].to_numpy(float), b[["x", "y"]].to_numpy(float), atol=1e-3)


def test_read_region_fills_a_bad_tile_white_only_when_asked(tmp_path, synth):
    from napari_mitosis.io import SlideError

    img = synth.render(0, 0, 768, 768)[0]
    path = _write(tmp_path / "s.tif", img)
    _damage(path, 4, "zeros")  # the middle tile
    with open_slide(path) as slide:
        with pytest.raises(SlideError, match="could not decode"):
            slide.read_region(0, 0, 0, 768, 768)
        slide.fill_bad_tiles = True
        out = slide.read_region(0, 0, 0, 768, 768)
        assert (out[256:512, 256:512] == 255).all()
        assert np.array_equal(out[:256], slide.read_region(0, 0, 0, 768, 256))
        assert [(b["x"], b["y"], b["w"], b["h"]) for b in slide.bad_tiles][:1] == [(256, 256, 256, 256)]


def test_a_garbled_jpeg_tile_is_flagged_where_it_would_be_analysed(tmp_path, synth):
    """Damaged JPEG data that still decode: shown as decoded when viewing, but an analysis (a
    slide that fills bad tiles) leaves the tile's pixels white and records why."""
    img = synth.render(0, 0, 768, 768)[0]
    good = _write(tmp_path / "good.tif", img)
    path = _write(tmp_path / "s.tif", img)
    _damage(path, 4, "garbled")  # the middle tile
    with open_slide(good) as ref, open_slide(path) as slide:
        clean = ref.read_region(0, 0, 0, 768, 768)
        seen = slide.read_region(0, 0, 0, 768, 768)  # viewing: decoded as it is, garbage included
        assert not np.array_equal(seen[256:512, 256:512], clean[256:512, 256:512])
        assert np.array_equal(seen[:256], clean[:256])
        slide.fill_bad_tiles = True
        out = slide.read_region(0, 0, 0, 768, 768)
        assert (out[256:512, 256:512] == 255).all()
        assert np.array_equal(out[:256], clean[:256]) and np.array_equal(out[512:], clean[512:])
        assert [(b["x"], b["y"], b["w"], b["h"]) for b in slide.bad_tiles] == [(256, 256, 256, 256)]
        assert "damaged JPEG data" in slide.bad_tiles[0]["error"]
    with open_slide(good) as ref:  # an undamaged slide has no bad tiles when checked
        ref.fill_bad_tiles = True
        assert np.array_equal(ref.read_region(0, 0, 0, 768, 768), clean) and ref.bad_tiles == []
