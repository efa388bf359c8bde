"""Regions a pathologist points at: the current view and rectangles drawn on the slide."""

from __future__ import annotations

import numpy as np


def rectangle_region(shapes_layer, slide_layer) -> tuple[int, int, int, int]:
    """Level-0 ``(x, y, w, h)`` of the last shape of a Shapes layer drawn over a slide layer."""
    if shapes_layer is None or len(shapes_layer.data) == 0:
        raise ValueError("draw a rectangle on the slide first (a Shapes layer, rectangle tool)")
    corners = np.asarray(shapes_layer.data[-1])[:, -2:]
    world = np.asarray([shapes_layer.data_to_world(c) for c in corners])[:, -2:]
    px = np.asarray([slide_layer.world_to_data(w) for w in world])[:, -2:]
    (y0, x0), (y1, x1) = px.min(axis=0), px.max(axis=0)
    return int(x0), int(y0), max(1, int(x1 - x0)), max(1, int(y1 - y0))


def last_rectangle(viewer, slide_layer) -> tuple[int, int, int, int]:
    """The last rectangle of the top-most Shapes layer drawn by the user, in level-0 pixels."""
    shapes = [ly for ly in viewer.layers if ly._type_string == "shapes" and "napari_mitosis" not in ly.metadata]
    return rectangle_region(shapes[-1] if shapes else None, slide_layer)


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
