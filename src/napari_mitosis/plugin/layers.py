"""napari layer data built from the tasks' results (used by the review widget).

Each ``*_layer_data`` returns a napari layer-data tuple ``(data, kwargs, kind)``
placing the result over the slide layer (whose scale is the level-0 pixel size,
so positions are in micrometres). Nothing here imports napari.
"""

from __future__ import annotations

import pandas as pd

from ..pipeline.heatmap import layer_kwargs
from ..pipeline.nuclei import labels_layer_kwargs
from ..pipeline.nucleus_types import TypingError, colors_of_types


def nuclei_layer_data(labels, table, name: str = "nuclei") -> tuple:
    """A napari layer-data tuple: the labels placed on the slide (um), the table as features.

    Examples
    --------
    >>> import numpy as np
    >>> t = pd.DataFrame({"id": [1]}); t.attrs.update(mpp=0.5, downsample=2.0, origin=(0, 0), level0_mpp=0.25)
    >>> data, kwargs, kind = nuclei_layer_data(np.ones((2, 2), np.int32), t)
    >>> kind, kwargs["scale"], kwargs["name"]
    ('labels', (0.5, 0.5), 'nuclei')
    """
    kwargs = {"name": name, "features": table.reset_index(drop=True), **labels_layer_kwargs(table.attrs)}
    return labels, kwargs, "labels"


def heatmap_layer_data(result, name: str = "mitosis heatmap", opacity: float = 0.5, colormap: str = "inferno") -> tuple:
    """A napari layer-data tuple ``(data, kwargs, 'image')`` showing the heatmap over the slide.

    >>> import numpy as np
    >>> from napari_mitosis.pipeline.heatmap import HeatmapResult
    >>> r = HeatmapResult(np.zeros((4, 4), np.float32), {"origin": (0, 0), "downsample": 8.0, "level0_mpp": 0.25,
    ...                                                   "threshold": 0.4})
    >>> data, kw, kind = heatmap_layer_data(r)
    >>> kind, kw["colormap"], kw["contrast_limits"], kw["scale"]
    ('image', 'inferno', (0.0, 1.0), (2.0, 2.0))
    """
    kwargs = {
        "name": name,
        "colormap": colormap,
        "opacity": opacity,
        "blending": "additive",
        "contrast_limits": (0.0, 1.0),
        "interpolation2d": "linear",
        "metadata": {k: v for k, v in result.attrs.items()},
        **layer_kwargs(result.attrs),
    }
    return result.heatmap, kwargs, "image"


def labels_colormap(table: pd.DataFrame) -> dict:
    """``{label id: RGBA}`` colouring each nucleus of a Labels layer by type (``None``: background).

    For napari >= 0.5 wrap it: ``layer.colormap = DirectLabelColormap(color_dict=labels_colormap(t))``.
    """
    if "id" not in table.columns:
        raise TypingError("the typed table has no 'id' column, so it cannot colour a label image")
    k = len(table.attrs.get("type_names") or []) or int(table["type"].max()) + 1
    cols = colors_of_types(table["type"].to_numpy(), k)
    cmap = {int(i): tuple(float(v) for v in c) for i, c in zip(table["id"].to_numpy(), cols, strict=True)}
    cmap[None] = (0.0, 0.0, 0.0, 0.0)
    cmap[0] = (0.0, 0.0, 0.0, 0.0)
    return cmap
