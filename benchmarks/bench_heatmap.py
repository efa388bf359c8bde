"""Throughput of the MIL mitosis heatmap on the CPU (docs/benchmarks.md, "Heatmap (MIL) throughput").

Level-0 megapixels per second of ``heatmap_task`` with the shipped ``mitosis-mil``:

1. a 4096 x 4096 px region of a synthetic 0.25 um/px JPEG OME-TIFF (written to a temporary folder),
   with and without Macenko normalisation, and the network alone on the same tiles;
2. the real ``CMU-1-Small-Region.svs`` (0.499 um/px, 2220 x 2967 px), all tissue, when
   ``../shared/data`` is there.

Usage::

    .venv/bin/python benchmarks/bench_heatmap.py [THREADS]      # default 1
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.io import open_slide
from napari_mitosis.io.pyramid_writer import write_synthetic_slide
from napari_mitosis.pipeline import run
from napari_mitosis.pipeline.heatmap import _model, heatmap_task


def timed(slide, **kw):
    t = time.perf_counter()
    res = run(heatmap_task(slide, device="cpu", **kw))
    return time.perf_counter() - t, res


def main() -> int:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    out = {"threads": threads, "torch": torch.__version__}
    print(f"torch threads: {threads}")
    net, spec = _model("mitosis-mil", "cpu")
    x = torch.rand(1, 3, 640, 640)  # a 512 px tile with its 64 px halo
    with torch.no_grad():
        net(x)
        t = time.perf_counter()
        for _ in range(5):
            net(x)
    dt = (time.perf_counter() - t) / 5
    core_mp = 512 * 512 / 1e6
    out["network_only"] = {"tile_s": dt, "working_mp_per_s": core_mp / dt,
                           "level0_mp_per_s_at_0.25": core_mp * 4 / dt}
    print(f"network only: {dt * 1000:.0f} ms per 512 px tile (+64 px halo) = {core_mp / dt:.2f} working MP/s "
          f"= {core_mp * 4 / dt:.1f} level-0 MP/s at 0.25 um/px")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.ome.tif"
        write_synthetic_slide(path, SyntheticHE(shape=(4096, 4096), mpp=0.25, seed=11, tissue="full"), tile=512)
        with open_slide(path) as slide:
            roi = (0, 0, 4096, 4096)
            timed(slide, roi=(0, 0, 512, 512))  # warm-up
            for norm in (True, False):
                dt, res = timed(slide, roi=roi, normalize=norm)
                mp = 4096 * 4096 / 1e6
                key = "synthetic_4096_normalised" if norm else "synthetic_4096_raw"
                out[key] = {"seconds": dt, "level0_mp": mp, "level0_mp_per_s": mp / dt, "heatmap_shape": res.heatmap.shape}
                print(f"synthetic 4096 x 4096 at 0.25 um/px, stain normalisation {'on' if norm else 'off'}: "
                      f"{dt:.1f} s = {mp / dt:.1f} level-0 MP/s")
    cmu = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
    if cmu.exists():
        with open_slide(cmu) as slide:
            H, W = slide.shape
            dt, res = timed(slide, all_tissue=True)
            mp = H * W / 1e6
            out["cmu1_all_tissue"] = {"seconds": dt, "level0_mp": mp, "level0_mp_per_s": mp / dt,
                                      "mpp": slide.mpp, "heatmap_shape": res.heatmap.shape}
            print(f"CMU-1-Small-Region.svs ({W} x {H} at {slide.mpp} um/px), all tissue (incl. tissue detection): "
                  f"{dt:.1f} s = {mp / dt:.1f} level-0 MP/s")
    (ROOT / "benchmarks" / "heatmap_bench.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
