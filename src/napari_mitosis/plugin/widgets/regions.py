"""Regions a pathologist points at: the current view and rectangles or polygons drawn on the slide."""

from __future__ import annotations

import numpy as np


def _is_user_shapes(layer) -> bool:
    from napari.layers import Shapes

    return isinstance(layer, Shapes) and "napari_mitosis" not in layer.metadata


def user_shapes_layers(viewer) -> list:
    """The Shapes layers the user drew (not the hotspot this plugin draws)."""
    return [ly for ly in viewer.layers if _is_user_shapes(ly)]


def _level0_vertices(shapes_layer, slide_layer, index: int = -1) -> np.ndarray:
    """(N, 2) level-0 ``x, y`` vertices of a shape of a Shapes layer drawn over a slide layer."""
    corners = np.asarray(shapes_layer.data[index])[:, -2:]
    world = np.asarray([shapes_layer.data_to_world(c) for c in corners])[:, -2:]
    px = np.asarray([slide_layer.world_to_data(w) for w in world])[:, -2:]
    return px[:, ::-1]


def rectangle_region(shapes_layer, slide_layer) -> tuple[int, int, int, int]:
    """Level-0 ``(x, y, w, h)`` bounding the last shape of a Shapes layer drawn over a slide layer."""
    if shapes_layer is None or len(shapes_layer.data) == 0:
        raise ValueError(NO_SHAPE)
    xy = _level0_vertices(shapes_layer, slide_layer)
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))  # float world round trips: 299.9999 is 300
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def shape_region(shapes_layer, slide_layer):
    """The last shape as a region: ``(x, y, w, h)`` for a rectangle (an ellipse: its bounding
    rectangle), a level-0 polygon (list of ``[x, y]``) for a polygon."""
    if shapes_layer is None or len(shapes_layer.data) == 0:
        raise ValueError(NO_SHAPE)
    kind = shapes_layer.shape_type[-1]
    if kind in ("rectangle", "ellipse"):
        return rectangle_region(shapes_layer, slide_layer)
    if kind in ("line", "path"):
        raise ValueError("the last shape is a line: draw a rectangle or a polygon around the region")
    return [[float(x), float(y)] for x, y in _level0_vertices(shapes_layer, slide_layer)]


NO_SHAPE = "draw a rectangle or a polygon on the slide first (a Shapes layer, rectangle or polygon tool)"


def last_rectangle(viewer, slide_layer) -> tuple[int, int, int, int]:
    """The bounding rectangle of the last shape of the top-most Shapes layer drawn by the user, in level-0 pixels."""
    shapes = user_shapes_layers(viewer)
    return rectangle_region(shapes[-1] if shapes else None, slide_layer)


def last_region(viewer, slide_layer):
    """The last shape of the top-most user Shapes layer: a rectangle ``(x, y, w, h)`` or a polygon."""
    shapes = user_shapes_layers(viewer)
    return shape_region(shapes[-1] if shapes else None, slide_layer)


def view_region(slide_layer, slide) -> tuple[int, int, int, int]:
    """Level-0 ``(x, y, w, h)`` of the part of the slide on screen."""
    corners = np.asarray(slide_layer.corner_pixels)[:, -2:]  # in pixels of the displayed level
    level = slide_layer.data_level if slide_layer.multiscale else 0
    ds = slide.level_downsamples[level]
    (y0, x0), (y1, x1) = corners * ds
    h, w = slide.shape
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the slide is not in view")
    return x0, y0, x1 - x0, y1 - y0
