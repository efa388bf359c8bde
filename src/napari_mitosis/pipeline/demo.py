"""The demo: a synthetic (or given) slide, what exists of the pipeline, results on disk."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.overview import draw_overview, draw_points
from ..io.detections import atomic_write_text, safe_csv_text
from .progress import Progress, Task, as_step
from .tissue import tissue_task

DEMO_SHAPE = (4096, 6144)


def synthetic_slide_path(
    folder, shape=DEMO_SHAPE, seed: int = 0, progress: Callable[[int, int], None] | None = None
) -> tuple[Path, object]:
    """Write (or reuse) a synthetic demo slide in ``folder``; returns its path and generator."""
    from ..core.synthetic import SyntheticHE
    from ..io.pyramid_writer import write_synthetic_slide

    synth = SyntheticHE(shape=tuple(shape), seed=seed, mitosis_fraction=0.01)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic_seed{seed}_{shape[0]}x{shape[1]}.ome.tif"
    if not path.exists():
        write_synthetic_slide(path, synth, progress=progress)
    return path, synth


def demo_task(slide_path, out_dir, mpp: float | None = None, truth=None, region: int = 1024,
              analyze: bool = True, workers: int = 2) -> Task:
    """What the demo runs on a slide: open it, detect tissue, segment and classify the
    nuclei of a ``region`` x ``region`` px field in the middle of the tissue, write results.

    Writes into ``out_dir``: ``slide_info.json``, ``tissue_mask.png``,
    ``overview.png`` (tissue outlined in green, ground-truth mitoses in red
    and granulocytes in orange when known), ``nuclei.csv`` (the field's
    nuclei), ``scores.csv`` (their class probabilities), ``counts.csv`` and,
    for a synthetic slide, ``ground_truth.csv``. With ``analyze`` (and a known pixel
    size) the whole slide is then analysed as ``napari-mitosis analyze`` does, into
    ``out_dir/analysis/`` (detections, counts per 2.37 mm2, hotspot, overview,
    summary.csv); with ground truth, detection precision and recall at 7.5 um are added.

    Returns
    -------
    dict summary (also written as ``summary.json``).
    """
    from skimage.io import imsave

    from ..io import open_slide

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    yield Progress(0, 3, f"opening {Path(slide_path).name}")
    slide = open_slide(slide_path, mpp=mpp)
    with slide:
        open_s = time.perf_counter() - t0
        info = slide.info()
        (out / "slide_info.json").write_text(json.dumps(info, indent=2))
        tissue = yield from as_step(tissue_task(slide), 1, 2)
        imsave(out / "tissue_mask.png", (tissue.mask * 255).astype(np.uint8), check_contrast=False)
        thumb = slide.thumbnail(1600)
        overview = draw_overview(thumb, tissue.mask)
        cells = None
        if truth is not None:
            cells = truth.cells()
            atomic_write_text(out / "ground_truth.csv", safe_csv_text(cells))
            overview = draw_points(overview, cells, slide.shape[1] / thumb.shape[1])
        imsave(out / "overview.png", overview, check_contrast=False)
        field = tissue_field(slide, tissue, region)
        nuclei, scores = None, None
        if slide.mpp is not None:
            from .classify import classify_points_task
            from .nuclei import segment_task

            _, nuclei = yield from as_step(segment_task(slide, roi=field), 2, 2)
            atomic_write_text(out / "nuclei.csv", safe_csv_text(nuclei))
            if len(nuclei):
                scores = yield from as_step(classify_points_task(slide, nuclei[["id", "x", "y"]]), 2, 2)
                atomic_write_text(out / "scores.csv", safe_csv_text(scores))
        summary = {
            "slide": str(slide_path),
            "format": slide.format,
            "size_px": list(slide.dimensions),
            "mpp": slide.mpp,
            "levels": slide.level_count,
            "open_seconds": round(open_s, 4),
            "tissue_area_mm2": None if tissue.area_mm2 is None else round(tissue.area_mm2, 3),
            "tissue_fraction": round(tissue.fraction, 4),
        }
        summary["field_xywh"] = list(field)
        if nuclei is not None:
            summary["field_nuclei"] = len(nuclei)
        if scores is not None:
            counts = scores["class"].value_counts()
            summary["field_predicted_mitotic_figures"] = int(counts.get("mitotic_figure", 0))
            summary["field_predicted_granulocytes"] = int(counts.get("granulocyte", 0))
        if cells is not None:
            summary["truth_mitotic_figures"] = int((cells["class"] == "mitotic_figure").sum())
            summary["truth_granulocytes"] = int((cells["class"] == "granulocyte").sum())
            x, y, w, h = field
            inside = cells[cells.x.between(x, x + w) & cells.y.between(y, y + h)]
            summary["field_truth_mitotic_figures"] = int((inside["class"] == "mitotic_figure").sum())
            summary["field_truth_granulocytes"] = int((inside["class"] == "granulocyte").sum())
        import pandas as pd

        atomic_write_text(out / "counts.csv", safe_csv_text(pd.DataFrame([summary])))
    if analyze and summary["mpp"] is not None:
        from .analyze import analyze_task

        rows = yield from as_step(analyze_task([slide_path], out / "analysis", mpp=mpp, workers=workers), 2, 2)
        r = rows.iloc[0]
        summary["analysis_folder"] = str(out / "analysis")
        for key in ("status", "mitotic_figures", "mitotic_per_2.37mm2", "hotspot_mitotic", "hotspot_per_2.37mm2",
                    "granulocytes", "seconds"):
            v = r[key]
            summary[f"analysis_{key}"] = v.item() if hasattr(v, "item") else v
        if cells is not None and r["status"] != "error":
            from ..io.detections import read_csv

            det = read_csv(Path(r["out"]) / "detections.csv")
            summary.update(_detection_scores(det, cells, summary["mpp"]))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    yield Progress(3, 3, "done")
    return summary


def _detection_scores(det, cells, mpp: float, radius_um: float = 7.5) -> dict:
    """Precision and recall of the detected mitotic figures against the synthetic truth (one-to-one, 7.5 um)."""
    from scipy.spatial import cKDTree

    out = {}
    for cls in ("mitotic_figure", "granulocyte"):
        d = det[det["class"] == cls].sort_values("score", ascending=False)[["x", "y"]].to_numpy(float)
        t = cells[cells["class"] == cls][["x", "y"]].to_numpy(float)
        tp = 0
        if len(d) and len(t):
            tree, used = cKDTree(t), np.zeros(len(t), bool)
            for p in d:
                for j in tree.query_ball_point(p, radius_um / mpp):
                    if not used[j]:
                        used[j] = True
                        tp += 1
                        break
        out[f"detect_{cls}_precision"] = round(tp / len(d), 3) if len(d) else None
        out[f"detect_{cls}_recall"] = round(tp / len(t), 3) if len(t) else None
    return out


def tissue_field(slide, tissue, size: int) -> tuple[int, int, int, int]:
    """A ``size`` x ``size`` level-0 field centred on the tissue's centre of mass."""
    h, w = slide.shape
    ys, xs = np.nonzero(tissue.mask)
    if len(ys):
        cy, cx = (ys.mean() + 0.5) * tissue.downsample, (xs.mean() + 0.5) * tissue.downsample
    else:
        cy, cx = h / 2, w / 2
    fw, fh = min(size, w), min(size, h)
    x0 = int(np.clip(cx - fw / 2, 0, w - fw))
    y0 = int(np.clip(cy - fh / 2, 0, h - fh))
    return x0, y0, fw, fh
