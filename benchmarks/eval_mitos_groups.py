"""The shipped detector on each MITOS-ATYPIA-14 frame group (A03_00 .. A03_03), at the recorded
0.2455 um/px as a user runs ``napari-mitosis detect FRAME --mpp 0.2455``, at the card's balanced
operating point: one-to-one matching within 7.5 um (``eval_detector.match``), counts per group.

Groups A03_00-02 are training data of the shipped models (in-sample: how well the classifier fits
the slide it was trained on); A03_03 is their validation group (held out). The gap between the two
says how much of the MITOS error is "a new part of a known slide" rather than underfitting.

    python benchmarks/eval_mitos_groups.py [--data ../shared/data]   # -> benchmarks/mitos_groups_results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_detector import MATCH_UM, MITOS_RECORDED_MPP, match  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import dask.array as da
    import torch
    from skimage.io import imread

    from napari_mitosis.io.slide import Slide
    from napari_mitosis.pipeline.detect import detect_tile, make_params

    torch.set_num_threads(a.threads)
    root = Path(a.data) / "mitosis" / "mitos_atypia14"
    pts = pd.read_csv(root / "points.csv")
    params = make_params(device="cpu")
    counts: dict = {}
    for f in sorted(pts.frame.unique()):
        group = Path(f).name[:6]
        img = imread(root / f)[..., :3]
        slide = Slide(path=root / f, levels=[da.from_array(img, chunks=(1024, 1024, 3))], mpp=MITOS_RECORDED_MPP,
                      format="image")
        gt = pts[(pts.frame == f) & (pts.label == "mitosis")][["x", "y"]].to_numpy(float)
        det = detect_tile(slide, 0, 0, img.shape[1], img.shape[0], params, MITOS_RECORDED_MPP)["detections"]
        det = det[det["class"] == "mitotic_figure"]
        tp = match(det[["x", "y"]].to_numpy(float), det["score"].to_numpy(float), gt, MATCH_UM / MITOS_RECORDED_MPP)
        c = counts.setdefault(group, dict(frames=0, tp=0, fp=0, fn=0))
        c["frames"] += 1
        c["tp"], c["fp"], c["fn"] = c["tp"] + tp, c["fp"] + len(det) - tp, c["fn"] + len(gt) - tp
    for c in counts.values():
        c["f1"] = 2 * c["tp"] / max(2 * c["tp"] + c["fp"] + c["fn"], 1)
    out = dict(views=params.views, threshold=params.thr("detect_mitotic_figure"), groups=counts)
    (ROOT / "benchmarks" / "mitos_groups_results.json").write_text(json.dumps(out, indent=1))
    for g, c in counts.items():
        print(f"{g}: {c['frames']} frames, TP {c['tp']} FP {c['fp']} FN {c['fn']}, F1 {c['f1']:.3f}")


if __name__ == "__main__":
    main()
