"""Cell classifier inference speed on the CPU (the "Inference speed" table of docs/classifier.md).

The measurement code shown in docs/classifier.md (there run as ``/tmp/bench_cls.py``), kept here
so the command is reproducible. Only changes: the thread count is an option, and the synthetic
slide is written to a temporary folder that is removed afterwards.

1. network only: ``cell-gstn`` and ``cell-cnn-baseline`` with the shipped weights, batches of 64
   random 128 px crops (512 crops, after one warm-up batch);
2. end to end: 1,000 cell positions on a synthetic 4096 x 4096 px JPEG OME-TIFF
   (read, rescale, classify) with ``classify_points_task`` and ``cell-gstn``.

Usage::

    .venv/bin/python benchmarks/bench_classifier.py THREADS      # e.g. 1
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.io.pyramid_writer import write_synthetic_slide
from napari_mitosis.pipeline import run
from napari_mitosis.pipeline.classify import classify_points_task, get_model

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
print(f"torch threads: {threads}")
x = torch.rand(512, 3, 128, 128)
for name in ("cell-gstn", "cell-cnn-baseline"):
    net, spec = get_model(name, "cpu")
    with torch.no_grad():
        net(x[:64])
        t = time.perf_counter()
        for i in range(0, 512, 64):
            net(x[i : i + 64])
    print(f"{name}: network only: {512 / (time.perf_counter() - t):.0f} cells/s")
with tempfile.TemporaryDirectory() as tmp:
    synth = SyntheticHE(shape=(4096, 4096), seed=1)
    path = write_synthetic_slide(Path(tmp) / "bench_slide.ome.tif", synth, tile=256)
    cells = synth.cells().head(1000)
    t = time.perf_counter()
    df = run(classify_points_task(path, cells[["id", "x", "y"]], device="cpu"))
    print(f"end to end: {len(df) / (time.perf_counter() - t):.0f} cells/s")
