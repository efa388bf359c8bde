"""Issue 18.7: malformed GeoJSON is a DetectionsError naming the feature, never a raw traceback,
and napari's File > Open declines it with a warning."""

import json

import pytest

from napari_mitosis.errors import NapariMitosisError
from napari_mitosis.io.detections import DetectionsError, from_geojson, read_detections
from napari_mitosis.plugin.detections import get_detections_reader


def _feature(geometry, **props):
    return {"type": "Feature", "geometry": geometry, "properties": props}


BAD_GEOMETRIES = [
    {"type": "Point", "coordinates": None},
    {"type": "Point", "coordinates": "12,34"},
    {"type": "Point", "coordinates": []},
    {"type": "Point", "coordinates": [1]},
    {"type": "Point", "coordinates": ["a", "b"]},
    {"type": "Point", "coordinates": [True, 2]},
    {"type": "Point", "coordinates": [{"x": 1}, 2]},
    {"type": "MultiPoint", "coordinates": None},
    {"type": "MultiPoint", "coordinates": [[1, 2], None]},
    {"type": "MultiPoint", "coordinates": "x"},
    {"type": "LineString", "coordinates": []},
    {"type": "Polygon", "coordinates": None},
    {"type": "Polygon", "coordinates": []},
    {"type": "Polygon", "coordinates": [[]]},
    {"type": "Polygon", "coordinates": "ring"},
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]], [2, 2]]},
    {"type": "Polygon", "coordinates": [[[0, 0], 5, [1, 1]]]},
    {"type": "Polygon", "coordinates": [[[0, 0], [1]]]},
    {"type": "Polygon", "coordinates": [[0, 0], [1, 1]]},
    {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 1]]], None]},
    {"type": "MultiPolygon", "coordinates": [[[0, 0]]]},
    {"type": "MultiPolygon", "coordinates": None},
]


@pytest.mark.parametrize("geometry", BAD_GEOMETRIES, ids=[str(i) for i in range(len(BAD_GEOMETRIES))])
def test_malformed_coordinates_are_a_clear_error(geometry):
    data = {"type": "FeatureCollection", "features": [_feature({"type": "Point", "coordinates": [1, 2]}),
                                                      _feature(geometry)]}
    with pytest.raises(DetectionsError, match="feature 2 of 2") as info:
        from_geojson(data, "cells.geojson")
    assert isinstance(info.value, NapariMitosisError) and "cells.geojson" in str(info.value)


@pytest.mark.parametrize("props", [{"score": "high"}, {"measurements": {"score": "n/a"}}, {"score": [1]},
                                   {"score": {"v": 1}}, {"score": True}, {"measurements": "lots"},
                                   {"classification": {"name": ["a"]}}, {"class": {"x": 1}}])
def test_malformed_properties_are_a_clear_error(props):
    with pytest.raises(DetectionsError, match="feature 1 of 1"):
        from_geojson([_feature({"type": "Point", "coordinates": [1, 2]}, **props)])


@pytest.mark.parametrize("data", [
    {"type": "FeatureCollection", "features": "all"},
    {"type": "FeatureCollection", "features": {"a": 1}},
    {"type": "FeatureCollection", "features": [1, 2]},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": "point"}]},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
                                                "properties": "p"}]},
    {"type": "FeatureCollection", "features": [], "properties": {"mpp": "fine"}},
    "text", None, 3,
])
def test_malformed_collections_are_a_clear_error(data):
    with pytest.raises(DetectionsError):
        from_geojson(data)


def test_what_is_valid_still_reads():
    df = from_geojson([_feature({"type": "Point", "coordinates": [1, 2, 0]}, score="0.5"),
                       _feature(None), _feature({"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 2]]]},
                                                measurements=[{"name": "score", "value": float("nan")}]),
                       _feature({"type": "GeometryCollection", "geometries": []})])
    assert df[["x", "y"]].values.tolist() == [[1, 2], [1, 1]]
    assert df["score"].iloc[0] == 0.5 and df["score"].isna().iloc[1]


@pytest.mark.parametrize("text", ["null", "[]", '{"type": "FeatureCollection", "features": null}',
                                  json.dumps({"type": "FeatureCollection", "features": [_feature(
                                      {"type": "Point", "coordinates": None})]}),
                                  json.dumps([_feature({"type": "Polygon", "coordinates": [[[0, 0], [1]]]},
                                                       score="high")]),
                                  "[" * 100000 + "]" * 100000, "\xff\xfe", ""])
def test_files_through_read_detections_and_napari_open(tmp_path, text):
    path = tmp_path / "bad.geojson"
    path.write_text(text, encoding="utf-8", errors="surrogateescape") if text != "\xff\xfe" \
        else path.write_bytes(b"\xff\xfe\x00")
    try:
        df = read_detections(path)
    except DetectionsError:
        pass
    else:
        assert len(df) == 0
        return
    with pytest.warns(UserWarning, match="cannot read bad.geojson"):
        assert get_detections_reader(str(path)) is None
