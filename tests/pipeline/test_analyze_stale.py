"""Issue 18.6: a slide that fails on a re-run leaves no results of the earlier run beside the error."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from napari_mitosis.pipeline.analyze import RESULT_FILES, analyze_task
from napari_mitosis.pipeline.detect import make_params
from napari_mitosis.pipeline.progress import run


@pytest.mark.parametrize("damage", ["garbage", "deleted", "empty"])
def test_a_slide_that_became_unreadable_leaves_no_stale_counts(tmp_path, synthetic_slide_file, damage):
    params = make_params(device="cpu", tile_um=140, candidates="nuclei")
    slide = tmp_path / "case.ome.tif"
    shutil.copy(synthetic_slide_file, slide)
    out = tmp_path / "out"
    first = run(analyze_task([slide], out, params=params, roi=(0, 0, 500, 500)))
    assert first.status[0] == "ok" and (out / "case" / "counts.csv").exists()
    if damage == "garbage":
        slide.write_bytes(b"II*\x00" + b"\x00" * 100)
    elif damage == "empty":
        slide.write_bytes(b"")
    else:
        slide.unlink()
    second = run(analyze_task([slide], out, params=params, roi=(0, 0, 500, 500)))
    assert second.status[0] == "error"
    for name in RESULT_FILES:
        assert not (out / "case" / name).exists(), name
    assert json.loads((out / "case" / "summary.json").read_text())["status"] == "error"
    assert pd.read_csv(out / "summary.csv").status.tolist() == ["error"]
