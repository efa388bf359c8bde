"""The review widget's Run: the chosen analysis steps on one region, as one task.

:func:`review_task` chains tissue detection (when not known yet), nucleus
segmentation, cell detection (mitotic figures, granulocytes), the weakly
supervised heatmap and nucleus typing, whichever are asked for, and yields
:class:`~napari_mitosis.pipeline.progress.Progress` whose ``partial`` is a
``(kind, value)`` pair as soon as a piece is ready:

- ``("tissue", TissueMask)``
- ``("detections", DataFrame)`` -- one tile's detections (level-0 pixels), streamed
- ``("nuclei", (labels, table))``
- ``("heatmap", result)``
- ``("types", table)``

so the viewer shows results while the rest still runs. Progress is the
fraction of the steps done, tile by tile within each step.
"""

from __future__ import annotations

from ..errors import NapariMitosisError
from .progress import Progress, Task

STEPS = ("nuclei", "cells", "heatmap", "types")
STEP_NAMES = {
    "nuclei": "Nuclei (segmentation)",
    "cells": "Cells (mitotic figures, granulocytes)",
    "heatmap": "Mitosis heatmap (weakly supervised)",
    "types": "Nucleus types (unsupervised, exploratory)",
}
_SCALE = 1000


class ReviewRunError(NapariMitosisError, ValueError):
    """The Run cannot start; the message says what to change."""


def available_steps() -> dict[str, str]:
    """Steps whose code and shipped model are installed -> '' or why not."""
    from importlib.util import find_spec

    from ..models.registry import list_models

    models = set(list_models())
    out = {"nuclei": "", "cells": ""}
    out["heatmap"] = "" if find_spec("napari_mitosis.pipeline.heatmap") and "mitosis-mil" in models else "the heatmap model is not installed"
    out["types"] = "" if find_spec("napari_mitosis.pipeline.nucleus_types") and "nuclei-infogan" in models else "the typing model is not installed"
    return out


def _sub(task, index: int, n: int, kind: str):
    """Re-yield a step's progress as part of the whole, tagging its partial results."""
    while True:
        try:
            p = next(task)
        except StopIteration as stop:
            return stop.value
        frac = p.fraction if p.total else 0.0
        part = None if p.partial is None else (kind, p.partial)
        yield Progress(int((index + frac) * _SCALE), n * _SCALE, p.message, part)


def review_task(slide, roi=None, all_tissue: bool = False, tissue=None, steps=("cells",), device: str = "auto",
                normalize: str | None = None, nuclei_method: str = "unet", operating_point: str = "balanced",
                thresholds: dict | None = None) -> Task:
    """Run ``steps`` on ``roi`` (level-0 ``x, y, w, h``) or on all tissue; the detection at the
    detector's ``operating_point`` ("balanced", "screening") with ``thresholds`` on top.

    Returns a dict ``{"tissue": TissueMask or None, "region": roi or None,
    "<step>": result ...}``.
    """
    unknown = set(steps) - set(STEPS)  # before the filtering below, which would drop them
    steps = [s for s in STEPS if s in set(steps)]
    if unknown:
        raise ReviewRunError(f"unknown step(s) {sorted(unknown)}; choose from {', '.join(STEPS)}")
    if not steps:
        raise ReviewRunError("choose at least one step to run")
    if slide.mpp is None:
        raise ReviewRunError("the slide's pixel size is unknown: enter it (um/px) before running the models")
    missing = {s: why for s, why in available_steps().items() if s in steps and why}
    if missing:
        raise ReviewRunError("; ".join(f"{STEP_NAMES[s]}: {why}" for s, why in missing.items()))
    n = len(steps) + (1 if tissue is None else 0)
    i = 0
    out = {"region": None if all_tissue else roi}
    if tissue is None:
        from .tissue import tissue_task

        tissue = yield from _sub(tissue_task(slide), i, n, "tissue")
        yield Progress(_SCALE, n * _SCALE, "tissue detected", ("tissue", tissue))
        i += 1
    out["tissue"] = tissue
    region_kw = {"roi": None if all_tissue else roi, "tissue": tissue if all_tissue else None}
    nuclei = None
    if "nuclei" in steps or "types" in steps:
        from .nuclei import segment_task

        if "nuclei" in steps:
            nuclei = yield from _sub(segment_task(slide, method=nuclei_method, device=device, **region_kw), i, n, "nuclei")
            yield Progress((i + 1) * _SCALE, n * _SCALE, f"{len(nuclei[1]):,} nuclei", ("nuclei", nuclei))
            out["nuclei"] = nuclei
            i += 1
    if "cells" in steps:
        from .detect import detect_task

        det = yield from _sub(detect_task(slide, all_tissue=all_tissue, device=device, normalize=normalize,
                                          operating_point=operating_point, thresholds=thresholds, **region_kw),
                              i, n, "detections")
        out["cells"] = det
        i += 1
    if "heatmap" in steps:
        from .heatmap import heatmap_task

        hm = yield from _sub(heatmap_task(slide, all_tissue=all_tissue, device=device, **region_kw), i, n, "heatmap")
        yield Progress((i + 1) * _SCALE, n * _SCALE, "heatmap ready", ("heatmap", hm))
        out["heatmap"] = hm
        i += 1
    if "types" in steps:
        from .nucleus_types import type_nuclei_task

        if nuclei is None:
            from .nuclei import segment_task

            nuclei = yield from _sub(segment_task(slide, method=nuclei_method, device=device, **region_kw), i, n, "nuclei")
            yield Progress(i * _SCALE, n * _SCALE, f"{len(nuclei[1]):,} nuclei", ("nuclei", nuclei))
        labels, table = nuclei
        typed = yield from _sub(type_nuclei_task(slide, table, device=device), i, n, "types")
        yield Progress((i + 1) * _SCALE, n * _SCALE, "nuclei typed", ("types", (labels, typed)))
        out["types"] = (labels, typed)
        i += 1
    return out
