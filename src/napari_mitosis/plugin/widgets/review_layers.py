"""The layers the review widget adds over a slide: tissue outline, nuclei, heatmap, nucleus types, hotspot.

Each function takes the viewer and the slide layer the result belongs to (not
"the current slide": a run keeps going while the user looks at another one)
and replaces an earlier layer of the same name.
"""

from __future__ import annotations

import numpy as np


def slide_layers(viewer) -> list:
    """Image layers that hold a slide opened by napari-mitosis."""
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and "slide" in ly.metadata]


def _replace(viewer, name: str):
    if name in viewer.layers:
        viewer.layers.remove(name)


def tissue_name(layer) -> str:
    return f"tissue ({layer.name})"


def show_tissue(viewer, layer, tissue):
    """The tissue mask as an outline over the slide."""
    mpp = layer.scale[-1]
    ds = tissue.downsample
    name = tissue_name(layer)
    _replace(viewer, name)
    labels = viewer.add_labels(
        tissue.mask.astype("uint8"), name=name, scale=(mpp * ds, mpp * ds),
        translate=((ds - 1) / 2 * mpp, (ds - 1) / 2 * mpp), opacity=0.8, units=layer.units,
    )
    labels.contour = 1  # outline only: the tissue stays readable underneath
    return labels


def tissue_text(tissue) -> str:
    if tissue is None:
        return "not detected yet"
    area = tissue.area_mm2
    return f"{area:.2f} mm² ({tissue.fraction:.0%} of the slide)" if area is not None else f"{tissue.fraction:.0%} of the slide"


def show_nuclei(viewer, layer, result):
    from ..layers import nuclei_layer_data as as_layer_data

    labels, table = result
    data, kwargs, _ = as_layer_data(labels, table, name=f"nuclei ({layer.name})")
    origin = table.attrs.get("origin", (0, 0))
    kwargs["name"] = f"nuclei ({layer.name}) at {int(origin[0])},{int(origin[1])}"
    _replace(viewer, kwargs["name"])
    ly = viewer.add_labels(data, units=layer.units, **kwargs)
    ly.contour = 1
    return ly


def show_heatmap(viewer, layer, result):
    from ..layers import heatmap_layer_data as as_layer_data

    data, kwargs, _ = as_layer_data(result)
    kwargs["name"] = f"mitosis heatmap ({layer.name})"
    _replace(viewer, kwargs["name"])
    return viewer.add_image(data, units=layer.units, **kwargs)


def show_types(viewer, layer, result):
    """Typed nuclei as labels coloured by type; returns the legend text."""
    from napari.utils.colormaps import DirectLabelColormap

    from ...pipeline.nucleus_types import legend_text
    from ..layers import labels_colormap
    from ..layers import nuclei_layer_data as as_layer_data

    labels, table = result
    name = f"nucleus types ({layer.name})"
    _replace(viewer, name)
    data, kwargs, _ = as_layer_data(labels, table, name=name)
    ly = viewer.add_labels(data, units=layer.units, **kwargs)
    ly.colormap = DirectLabelColormap(color_dict=labels_colormap(table))
    return legend_text(table)


def hotspot_name(layer) -> str:
    return f"hotspot ({layer.name})"


def show_hotspot(viewer, layer, hotspot):
    """The hotspot rectangle (yellow outline); emptied when there is none. Returns the layer or None."""
    name = hotspot_name(layer)
    if hotspot is None or hotspot.count == 0:
        if name in viewer.layers:
            viewer.layers[name].data = []
        return None
    rect = np.array([[hotspot.y, hotspot.x], [hotspot.y, hotspot.x + hotspot.width],
                     [hotspot.y + hotspot.height, hotspot.x + hotspot.width], [hotspot.y + hotspot.height, hotspot.x]])
    if name in viewer.layers:
        viewer.layers[name].data = [rect]
        return viewer.layers[name]
    active = viewer.layers.selection.active
    ly = viewer.add_shapes(
        [rect], shape_type="rectangle", name=name, edge_color="yellow", face_color="transparent",
        edge_width=max(hotspot.width / 300, 2), scale=tuple(layer.scale[-2:]), units=layer.units,
        metadata={"napari_mitosis": "hotspot"},
    )
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return ly


def keep_on_top(viewer, name: str, select: bool = True):
    """Move the layer ``name`` (the detections) to the top, and select it."""
    if name not in viewer.layers:
        return
    names = [ly.name for ly in viewer.layers]
    viewer.layers.move(names.index(name), len(names))
    if select:
        viewer.layers.selection.active = viewer.layers[name]
