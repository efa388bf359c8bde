"""Detection files: CSV and QuPath GeoJSON round trips, QuPath exports, bad files."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_mitosis.io.detections import (
    DetectionsError,
    atomic_write_bytes,
    atomic_write_text,
    read_detections,
    to_geojson,
    write_detections,
)


@pytest.fixture
def table():
    df = pd.DataFrame({"x": [12.5, 3000.0, 40.0], "y": [7.0, 1500.25, 9.0],
                       "class": ["mitotic_figure", "granulocyte", "other"], "score": [0.91, 0.66, np.nan],
                       "status": ["model", "confirmed", "added"], "id": [0, 1, 2]})
    df.attrs["mpp"] = 0.2465
    return df


@pytest.mark.parametrize("suffix", [".csv", ".geojson"])
def test_round_trip_keeps_positions_classes_scores_and_pixel_size(tmp_path, table, suffix):
    path = write_detections(table, tmp_path / f"d{suffix}", slide="s.svs")
    back = read_detections(path)
    np.testing.assert_allclose(back[["x", "y"]], table[["x", "y"]])
    assert list(back["class"]) == list(table["class"]) and list(back["status"]) == list(table["status"])
    np.testing.assert_allclose(back["score"], table["score"])
    assert back.attrs["mpp"] == pytest.approx(0.2465)


def test_geojson_is_what_qupath_imports(table):
    fc = to_geojson(table, slide="s.svs")
    f = fc["features"][0]
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    assert f["geometry"] == {"type": "Point", "coordinates": [12.5, 7.0]}  # level-0 pixels, x then y
    assert f["properties"]["objectType"] == "annotation"
    assert f["properties"]["classification"]["name"] == "Mitotic figure"
    assert len(f["properties"]["classification"]["color"]) == 3
    json.dumps(fc, allow_nan=False)  # strict JSON: QuPath rejects NaN


def test_a_qupath_export_with_polygons_and_old_measurements_imports(tmp_path):
    qupath = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]},
         "properties": {"objectType": "detection", "classification": {"name": "Mitosis", "colorRGB": -65536},
                        "measurements": [{"name": "score", "value": 0.8}]}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[100, 200], [300, 400]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Eosinophil"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]}, "properties": {}},
    ]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(qupath))
    df = read_detections(path)
    assert list(df["class"]) == ["mitotic_figure", "granulocyte", "granulocyte", "mitotic_figure"]
    assert df.loc[0, ["x", "y"]].tolist() == pytest.approx([4.0, 4.0])  # ring centroid (closing vertex counted)
    assert df.loc[0, "score"] == pytest.approx(0.8)
    assert list(df["status"]) == ["model", "added", "added", "added"]


def test_bad_files_say_what_is_wrong(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DetectionsError, match="empty"):
        read_detections(tmp_path / "empty.csv")
    (tmp_path / "noxy.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DetectionsError, match="needs columns x and y"):
        read_detections(tmp_path / "noxy.csv")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(DetectionsError, match="not valid GeoJSON"):
        read_detections(tmp_path / "bad.geojson")
    with pytest.raises(DetectionsError, match="use .csv or .geojson"):
        read_detections(tmp_path / "x.txt")
    (tmp_path / "st.csv").write_text("x,y,status\n1,2,maybe\n")
    with pytest.raises(DetectionsError, match="unknown status 'maybe'"):
        read_detections(tmp_path / "st.csv")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, 12345)  # fails half-way: after the temporary file was made
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary left behind
