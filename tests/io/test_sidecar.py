"""The review's annotation file: autosave, restore, slide identity, corrupt files, read-only folders."""

import json
import os

import pandas as pd
import pytest

from napari_mitosis.core.review import ReviewState
from napari_mitosis.io import sidecar
from napari_mitosis.io.sidecar import (
    SidecarError,
    find_sidecar,
    load_review,
    save_review,
    sidecar_path,
)

IDENT = {"name": "a.svs", "width": 1000, "height": 800, "mpp": 0.25, "fingerprint": "f1"}


def _state(n=2):
    s = ReviewState()
    s.add_model(pd.DataFrame({"x": [1.0 * i for i in range(n)], "y": [2.0] * n, "class": ["mitotic_figure"] * n,
                              "score": [0.7] * n}))
    s.confirm([0])
    return s


def test_save_and_restore_every_detail(tmp_path):
    s = _state()
    s.remove([1])
    path = save_review(tmp_path / "a.svs.mitosis.json", s, IDENT)
    back, note = load_review(path, IDENT)
    assert note == ""
    pd.testing.assert_frame_equal(back.df, s.df, check_dtype=False)
    assert list(back.rejected["id"]) == [1]


def test_another_slides_file_is_refused(tmp_path):
    path = save_review(tmp_path / "a.svs.mitosis.json", _state(), IDENT)
    with pytest.raises(SidecarError, match="refusing"):
        load_review(path, {**IDENT, "name": "b.svs", "width": 999})
    with pytest.raises(SidecarError, match="different content"):
        load_review(path, {**IDENT, "fingerprint": "other"})
    moved = {**IDENT, "name": "renamed.svs"}  # same file under another name: still its review
    assert len(load_review(path, moved)[0].df) == 2


def test_a_corrupt_file_is_kept_aside_and_the_backup_restored(tmp_path):
    path = tmp_path / "a.svs.mitosis.json"
    save_review(path, _state(2), IDENT)
    save_review(path, _state(3), IDENT)  # the 2-cell save becomes .bak
    path.write_text('{"format": "napari-mitosis-review", "detections": [')  # a crash mid-write by another tool
    state, note = load_review(path, IDENT)
    assert len(state.df) == 2 and "corrupt" in note and "backup" in note
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_text().endswith("[")  # the user's file is never destroyed
    save_review(path, state, IDENT)
    assert json.loads(path.read_text())["format"] == "napari-mitosis-review"


def test_corrupt_without_backup_says_so_and_keeps_the_file(tmp_path):
    path = tmp_path / "a.svs.mitosis.json"
    path.write_text("garbage")
    with pytest.raises(SidecarError, match="no usable backup"):
        load_review(path, IDENT)
    assert any(".corrupt-" in p.name for p in tmp_path.iterdir())


def test_beside_the_slide_or_in_the_fallback_folder_when_read_only(tmp_path, monkeypatch):
    monkeypatch.setenv(sidecar.FALLBACK_ENV, str(tmp_path / "fallback"))
    slides = tmp_path / "slides"
    slides.mkdir()
    slide = slides / "a.svs"
    slide.write_bytes(b"x" * 100)
    assert sidecar_path(slide, IDENT) == slides / "a.svs.mitosis.json"
    # a folder nobody may write to (root ignores permissions, so block the write probe instead)
    if os.geteuid() == 0:
        (slides / f".napari-mitosis-write-test-{os.getpid()}").mkdir()
    else:
        slides.chmod(0o555)
    try:
        path = sidecar_path(slide, IDENT)
        assert path.parent == tmp_path / "fallback" and "f1" in path.name
        save_review(path, _state(), IDENT)
        assert find_sidecar(slide, IDENT) == path  # and it is found again on reopening
    finally:
        slides.chmod(0o755)
