"""How fast Cancel stops a Run of the review widget (cells + nuclei + heatmap on all tissue of a real SVS).

Run: xvfb-run -a .venv/bin/python benchmarks/bench_cancel.py  (needs ../shared/data)
"""
import time, os, tempfile, napari
from pathlib import Path
from qtpy.QtWidgets import QApplication
from napari_mitosis.plugin.reader import get_reader
from napari_mitosis.plugin.widgets.review import ReviewWidget, REGION_TISSUE
os.environ["NAPARI_MITOSIS_ANNOTATIONS"] = tempfile.mkdtemp()
SLIDE = Path(__file__).resolve().parents[1].parent / "shared/data/slides/TCGA-CR-7395-01A-01-TS1.svs"
d = Path(tempfile.mkdtemp()); p = d / "t.svs"; os.symlink(SLIDE, p)
v = napari.Viewer(show=False); w = ReviewWidget(v)
[(data, kw, _)] = get_reader(str(p))(str(p)); v.add_image(data, **kw)
w.mpp_apply.click(); w.region.setCurrentText(REGION_TISSUE)
for k, b in w.step_boxes.items(): b.setChecked(k in ("cells", "nuclei", "heatmap"))
w.nuclei_method.setCurrentText("unet")
for wait in (1.0, 4.0, 8.0):
    w.run_button.click(); t0 = time.time()
    while time.time() - t0 < wait: QApplication.processEvents(); time.sleep(0.01)
    msg = w.status.text()
    w.run_button.click(); t1 = time.time()
    while w.worker is not None: QApplication.processEvents(); time.sleep(0.005)
    print(f"after {wait}s ({msg[:60]}): cancelled in {time.time()-t1:.2f}s")
v.close()
