"""Time of a review edit with a million detections in the layer (issue #17, item 8).

Opens the CMU-1 small region in a napari viewer, adds 10**6 model detections to its review and
times each keyboard edit (confirm, change class, remove, add, undo) as the GUI thread spends it,
and separately the redraw that follows (under Xvfb that is software OpenGL, far slower than a
workstation's GPU; "select" is the redraw after a selection change alone, no edit). The background
save is not counted (it runs in the writer thread). Needs a display (Xvfb):

    xvfb-run -a .venv/bin/python benchmarks/bench_review.py [--n 1000000] [--out benchmarks/review_results.json]

Results and the command are in docs/review.md. Timing is measured here, never asserted in tests
(tests/plugin/test_review_flow.py checks that an edit updates its rows and saves off the GUI thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SLIDE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region_pyramid.ome.tif"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10**6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "review_results.json"))
    a = ap.parse_args(argv)
    if not SLIDE.exists():
        raise SystemExit(f"needs {SLIDE} (../shared/data)")
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mitosis.plugin.reader import get_reader
    from napari_mitosis.plugin.widgets.review import ReviewWidget

    tmp = Path(tempfile.mkdtemp(prefix="bench_review_"))
    os.environ["NAPARI_MITOSIS_ANNOTATIONS"] = str(tmp / "fallback")
    link = tmp / SLIDE.name
    os.symlink(SLIDE, link)
    viewer = napari.Viewer(show=True)
    widget = ReviewWidget(viewer)
    [(data, kwargs, _)] = get_reader(str(link))(str(link))
    viewer.add_image(data, **kwargs)
    r = widget.review
    rng = np.random.default_rng(0)
    r.add_model_detections(pd.DataFrame({"x": rng.uniform(0, 2200, a.n), "y": rng.uniform(0, 2900, a.n),
                                         "class": "mitotic_figure", "score": rng.uniform(0, 1, a.n)}))
    r.flush()
    app = QApplication.instance()
    app.processEvents()
    times: dict[str, list[float]] = {}
    redraw: dict[str, list[float]] = {}
    for rep in range(a.repeat):
        r.layer.selected_data = {5 + rep}
        t = time.perf_counter()
        app.processEvents()  # a selection change alone: the redraw of a million points, no edit
        redraw.setdefault("select", []).append(time.perf_counter() - t)
        for name, edit in [("confirm", r.confirm), ("class", lambda: r.set_class("granulocyte")), ("remove", r.remove),
                           ("add", lambda: r.add_at(np.asarray(r.layer.data_to_world((100.0, 100.0))))),
                           ("undo", r.undo)]:
            t = time.perf_counter()
            edit()
            times.setdefault(name, []).append(time.perf_counter() - t)
            t = time.perf_counter()
            app.processEvents()  # the redraw the edit asked for (software OpenGL under Xvfb)
            redraw.setdefault(name, []).append(time.perf_counter() - t)
            r.layer.selected_data = {7 + rep}
            app.processEvents()
    r.flush()
    out = {"n_detections": a.n, "seconds_per_edit": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
           "seconds_redraw_after": {k: [round(v, 3) for v in vs] for k, vs in redraw.items()},
           "max_s": round(max(max(v) for v in times.values()), 3), "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "command": "xvfb-run -a .venv/bin/python benchmarks/bench_review.py"}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
