"""Issue 18.5: result and review files honour the umask (a shared folder), and CSV text cells
cannot become spreadsheet formulas."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from napari_mitosis.io.detections import (
    atomic_write_bytes,
    atomic_write_text,
    escape_cell,
    read_csv,
    safe_csv_text,
    unescape_cell,
    write_csv,
    write_geojson,
)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o027, 0o077, 0o000])
def test_new_files_get_the_permissions_of_the_umask(tmp_path, umask, mask):
    umask(mask)
    det = pd.DataFrame({"x": [1.0], "y": [2.0], "class": ["mitotic_figure"], "score": [0.9]})
    for path in (atomic_write_bytes(tmp_path / "a.bin", b"x"), atomic_write_text(tmp_path / "b.txt", "x"),
                 write_csv(det, tmp_path / "d.csv"), write_geojson(det, tmp_path / "d.geojson")):
        assert _mode(path) == 0o666 & ~mask, path.name
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "shared.csv"
    path.write_text("old")
    os.chmod(path, 0o664)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o664


def test_the_review_sidecar_honours_the_umask(tmp_path, umask):
    """The review sidecar is saved through the same helper."""
    from napari_mitosis.io import sidecar

    umask(0o002)
    assert sidecar.atomic_write_text is atomic_write_text


DANGEROUS = ["=HYPERLINK(\"http://x\",\"a\")", "=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "-", "+",
             "=", "@", "\t=1", "\r=1", "-x", "--help", "=slide.svs"]
HARMLESS = ["slide.svs", "-1.5", "+3", "1e-3", "-inf", "mitotic_figure", "", "a=b", " =1", "'quoted"]


@pytest.mark.parametrize("text", DANGEROUS)
def test_text_that_a_spreadsheet_would_run_is_escaped(text):
    text = text.replace("\r", "\n")
    assert escape_cell(text) == "'" + text
    assert unescape_cell(escape_cell(text)) == text


def test_a_carriage_return_cannot_start_a_row():
    for cell in _cells(safe_csv_text(pd.DataFrame({"a": ["ok\r=1+1", "x\r\n@SUM(A1)"], "b": [1, 2]}))):
        assert not cell.startswith(("=", "@")), cell


@pytest.mark.parametrize("text", HARMLESS)
def test_numbers_and_plain_text_are_written_as_they_are(text):
    assert escape_cell(text) == text
    assert unescape_cell(text) == text


def _cells(csv_text):
    import csv
    import io

    return [c for row in csv.reader(io.StringIO(csv_text, newline="")) for c in row]


def test_no_written_cell_starts_a_formula(tmp_path):
    df = pd.DataFrame({"slide": DANGEROUS, "note": HARMLESS + [""] * (len(DANGEROUS) - len(HARMLESS)),
                       "n": np.arange(len(DANGEROUS)) - 3, "v": np.linspace(-1, 1, len(DANGEROUS))})
    for cell in _cells(safe_csv_text(df)):
        assert _is_number(cell) or not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def test_detection_csv_with_hostile_notes_round_trips(tmp_path):
    det = pd.DataFrame({"x": [1.0, 2.0], "y": [2.0, 3.0], "class": ["mitotic_figure", "other"],
                        "score": [0.9, -0.5], "comment": ["=HYPERLINK(\"http://evil\")", "-1"]})
    path = write_csv(det, tmp_path / "d.csv")
    text = path.read_text()
    assert "'=HYPERLINK" in text and ",-0.5," in text
    back = read_csv(path)
    assert back["comment"].tolist() == ["=HYPERLINK(\"http://evil\")", -1] or \
        back["comment"].astype(str).tolist() == ["=HYPERLINK(\"http://evil\")", "-1"]


def test_counts_and_summary_of_a_slide_with_a_formula_name_are_escaped(tmp_path):
    from napari_mitosis.core.counting import count_table
    from napari_mitosis.pipeline.export import write_review_files

    det = pd.DataFrame({"x": [1.0], "y": [2.0], "class": ["mitotic_figure"], "score": [0.9]})
    rows = count_table(["mitotic_figure"], 2.37)
    for name in DANGEROUS[:5]:
        paths = write_review_files(tmp_path, det, rows, None, 2.37, 0.25, slide=name)
        cells = _cells(paths["counts"].read_text())
        assert "'" + name in cells
        for cell in cells:
            assert _is_number(cell) or not cell.startswith(("=", "+", "-", "@")), cell
