"""Held-out evaluation of the two-stage detector (cell-dense -> cell-effnet) through the
pipeline a user runs (``pipeline.detect.detect_tile`` on each image, as ``napari-mitosis detect
IMAGE --mpp UM`` does), and the choice of its operating points on those validation domains.

Validation domains (never trained on; ``training/train_detector.HOLDOUT_*``):

- ``paste/atnorm_br``, ``paste/amibr_hamamatsu_s360``: held-out mitosis crops (AtNorM-Br: TCGA,
  many centres; AMi-Br's Hamamatsu S360 scanner) feathered into held-out MoNuSeg fields
  (0.25 um/px, other organs and centres), 25 per 1000 px field: detection across domains
  without full frames. For validation only, never for training (a network would learn the seams).
- ``lookalike``: the held-out MITOS-ATYPIA-14 look-alikes (group A03_03) pasted the same way:
  the share that gets a mitosis detection.
- ``mitos14``: the 16 frames of MITOS-ATYPIA-14 group A03_03, at their recorded 0.2455 um/px as
  a user runs them (their cells look 1.5x larger than the pixel size says; training covers both).
- ``eoe``: the EoE tiles of the 7 held-out blocks (granulocytes).

Matching as in MIDOG: one-to-one within 7.5 um, greedy by score, micro F1 per domain.

    python benchmarks/eval_detector.py [--cache DIR] [--checkpoints]   # rows + operating points
    napari-mitosis train detector --stage ship                        # writes the models with them

``--checkpoints`` evaluates the training checkpoints (``CACHE/ckpt``) instead of the shipped
models. Results: ``CACHE/operating_points.json`` and ``benchmarks/detector_results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_mitosis.training.detector_data import CROP_MPP, DENSE_MPP, MITOS_MPP, load_cache, read_rgb, rescale  # noqa: E402
from napari_mitosis.training.train_detector import CACHE, holdout_mask, image_candidates  # noqa: E402

MATCH_UM = 7.5
MITOS_RECORDED_MPP = 0.2455
MIT_DOMAINS = ("paste/atnorm_br", "paste/amibr_hamamatsu_s360", "mitos14")
GRAN_DOMAINS = ("eoe",)
CAND_GRID = (0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
CLS_GRID = np.round(np.arange(0.30, 0.99, 0.01), 2)
#: Test-time views of the classifier the operating points are chosen with (and shipped with).
VIEWS = 2
LOOSE = {"detect_candidate_mitotic_figure": 0.02, "detect_candidate_granulocyte": 0.02}


# ------------------------------------------------------------------ validation sets
def feather_mask(size=128, ramp=20):
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.minimum.reduce([yy, xx, size - 1 - yy, size - 1 - xx])
    return np.clip(r / ramp, 0, 1).astype(np.float32)[..., None]


def paste_fields(crops, fields, per_field=25, seed=0):
    """Feather 128 px crops (object at the centre) into fields, ``per_field`` each, not
    overlapping; returns (images, object positions per image)."""
    rng = np.random.default_rng(seed)
    mask = feather_mask()
    out, pts = [], []
    order = rng.permutation(len(crops))
    k, f = 0, 0
    while k < len(order):
        field = fields[f % len(fields)]
        field = np.ascontiguousarray(np.rot90(field, f // len(fields))).copy()
        f += 1
        H, W = field.shape[:2]
        placed, tries = [], 0
        while len(placed) < per_field and k < len(order) and tries < 5000:
            tries += 1
            x, y = int(rng.integers(0, W - 128)), int(rng.integers(0, H - 128))
            if any(abs(x - a) < 136 and abs(y - b) < 136 for a, b in placed):
                continue
            c = crops[order[k]].astype(np.float32)
            k += 1
            region = field[y : y + 128, x : x + 128].astype(np.float32)
            field[y : y + 128, x : x + 128] = (mask * c + (1 - mask) * region).astype(np.uint8)
            placed.append((x, y))
        out.append(field)
        pts.append(np.array([(x + 63.5, y + 63.5) for x, y in placed], float).reshape(-1, 2))
    return out, pts


def validation_sets(cache=CACHE):
    """{name: dict(images, mpp, gt=[(mitoses, granulocytes) per image], [lookalikes])}."""
    _, meta = load_cache(cache, "dense")
    hold = holdout_mask(meta)
    paths = list(meta.path)
    fields = [read_rgb(p) for p, g, h in zip(paths, meta.group, hold, strict=True) if g.startswith("monuseg_train/") and h]
    none = np.zeros((0, 2))
    sets = {}
    for dom in ("atnorm_br", "amibr_hamamatsu_s360"):
        crops = [read_rgb(p) for p, d in zip(paths, meta.domain, strict=True) if d == dom]
        ims, pts = paste_fields(crops, fields, seed=1)
        sets[f"paste/{dom}"] = dict(images=ims, mpp=CROP_MPP, gt=[(p, none) for p in pts])
    la = []
    for p, g, neg in zip(paths, meta.group, meta.neg, strict=True):
        if g == "mitos14/A03_03" and len(neg):
            fr = cv2.copyMakeBorder(rescale(read_rgb(p), MITOS_MPP, CROP_MPP), 64, 64, 64, 64, cv2.BORDER_REFLECT101)
            for x, y in np.asarray(neg) * (DENSE_MPP / CROP_MPP):  # cache points are at DENSE_MPP
                x, y = int(round(x)), int(round(y))
                la.append(fr[y : y + 128, x : x + 128])
    ims, pts = paste_fields(la, fields, seed=2)
    sets["lookalike"] = dict(images=ims, mpp=CROP_MPP, gt=[(none, none)] * len(ims), lookalikes=pts)
    mit_ims, mit_gt, eoe_ims, eoe_gt = [], [], [], []
    for p, g, h, r_mit, r_gran in zip(paths, meta.group, hold, meta.mit, meta.gran, strict=True):
        if g == "mitos14/A03_03":
            mit_ims.append(read_rgb(p))
            mit_gt.append((np.asarray(r_mit).reshape(-1, 2) * (DENSE_MPP / MITOS_MPP), none))
        elif g.startswith("eoe/") and h:
            eoe_ims.append(read_rgb(p))
            eoe_gt.append((none, np.asarray(r_gran).reshape(-1, 2)))
    # at the recorded pixel size, as a user runs them (napari-mitosis detect FRAME --mpp 0.2455)
    sets["mitos14"] = dict(images=mit_ims, mpp=MITOS_RECORDED_MPP, gt=mit_gt)
    sets["eoe"] = dict(images=eoe_ims, mpp=0.5, gt=eoe_gt)
    return sets


# ------------------------------------------------------------------ scoring through the pipeline
def score_images(images, mpp, params) -> list[np.ndarray]:
    """Every candidate of each image as the pipeline scores it: rows x, y (image px), dense
    mitosis, dense granulocyte, p mitosis, p granulocyte, p other."""
    cols = ["x", "y", "dense_mitotic_figure", "dense_granulocyte", "p_mitotic_figure", "p_granulocyte", "p_other"]
    out = []
    for img in images:
        det = image_candidates(img, mpp, params)
        out.append(det[cols].to_numpy(float) if len(det) else np.zeros((0, 7)))
    return out


def nms(xy, score, r):
    order = np.argsort(-score, kind="stable")
    tree = cKDTree(xy)
    alive = np.ones(len(xy), bool)
    keep = []
    for i in order:
        if alive[i]:
            keep.append(i)
            alive[tree.query_ball_point(xy[i], r)] = False
    return np.asarray(keep, int)


def match(xy, score, gt, r_px) -> int:
    """True positives of a one-to-one matching greedy by score."""
    if not len(gt) or not len(xy):
        return 0
    used = np.zeros(len(gt), bool)
    tree = cKDTree(gt)
    tp = 0
    for i in np.argsort(-score, kind="stable"):
        for j in sorted(tree.query_ball_point(xy[i], r_px), key=lambda j: np.hypot(*(gt[j] - xy[i]))):
            if not used[j]:
                used[j] = True
                tp += 1
                break
    return tp


DENSE_WEIGHT = 0.5  # the pipeline's; --dense-weights compares others


def score_of(rows, c):
    """The pipeline's detection score: sqrt(p_dense * p_classifier) (core/decision.py), or
    p_dense**a * p_classifier**(1 - a) for another DENSE_WEIGHT a."""
    if DENSE_WEIGHT == 0.5:
        return np.sqrt(rows[:, 2 + c] * rows[:, 4 + c])
    return rows[:, 2 + c] ** DENSE_WEIGHT * rows[:, 4 + c] ** (1 - DENSE_WEIGHT)


def f1_at(rows_list, gts, mpp, c, t_cand, t_cls):
    TP = FP = FN = 0
    for rows, gt in zip(rows_list, gts, strict=True):
        sel = (rows[:, 2 + c] >= t_cand) & (score_of(rows, c) >= t_cls) if len(rows) else np.zeros(0, bool)
        xy, s = rows[sel, :2], score_of(rows[sel], c)
        if len(xy) > 1:
            k = nms(xy, s, 6.0 / mpp)
            xy, s = xy[k], s[k]
        tp = match(xy, s, gt, MATCH_UM / mpp)
        TP, FP, FN = TP + tp, FP + len(xy) - tp, FN + len(gt) - tp
    p, r = TP / max(TP + FP, 1), TP / max(TP + FN, 1)
    return dict(f1=2 * p * r / max(p + r, 1e-9), precision=p, recall=r, tp=TP, fp=FP, fn=FN)


def cand_recall(rows_list, gts, mpp, c, t):
    hit = tot = n = 0
    for rows, gt in zip(rows_list, gts, strict=True):
        xy = rows[rows[:, 2 + c] >= t, :2] if len(rows) else np.zeros((0, 2))
        n, tot = n + len(xy), tot + len(gt)
        if len(gt) and len(xy):
            d, _ = cKDTree(xy).query(gt)
            hit += int((d <= MATCH_UM / mpp).sum())
    return hit / max(tot, 1), n


def choose(sets, rows_by, c, domains):
    """Candidate threshold: the highest with candidate recall >= 0.97 on every domain; class
    thresholds: the best mean F1 over the domains ("balanced") and the highest with recall >= 0.9
    on every domain, but not above balanced ("screening")."""
    cand = {}
    for t in CAND_GRID:
        cand[t] = {}
        for d in domains:
            s = sets[d]
            area = sum(im.shape[0] * im.shape[1] for im in s["images"]) * s["mpp"] ** 2 / 1e6
            rec, n = cand_recall(rows_by[d], [g[c] for g in s["gt"]], s["mpp"], c, t)
            cand[t][d] = dict(recall=rec, per_mm2=n / area)
    ok = [t for t in CAND_GRID if all(v["recall"] >= 0.97 for v in cand[t].values())]
    t_cand = max(ok) if ok else min(CAND_GRID)
    curves = {float(t): {d: f1_at(rows_by[d], [g[c] for g in sets[d]["gt"]], sets[d]["mpp"], c, t_cand, t)
                         for d in domains} for t in CLS_GRID}
    mean_f1 = {t: float(np.mean([v["f1"] for v in cv.values()])) for t, cv in curves.items()}
    t_bal = max(mean_f1, key=lambda t: (mean_f1[t], t))
    scr = [t for t, cv in curves.items() if all(v["recall"] >= 0.9 for v in cv.values())]
    # never stricter than balanced: a reviewer who picks "screening" expects more detections, not fewer
    t_scr = min(max(scr) if scr else float(min(CLS_GRID)), t_bal)
    return dict(candidate=t_cand, candidate_table={str(k): v for k, v in cand.items()}, balanced=t_bal, screening=t_scr,
                balanced_metrics=curves[t_bal], screening_metrics=curves[t_scr], mean_f1_balanced=mean_f1[t_bal],
                curve={f"{t:.2f}": {d: round(v["f1"], 4) for d, v in cv.items()} for t, cv in curves.items()})


def lookalike_share(sets, rows, t_cand, t_cls):
    s = sets["lookalike"]
    m = f1_at(rows, s["lookalikes"], s["mpp"], 0, t_cand, t_cls)
    return m["recall"], m["tp"] + m["fn"]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--checkpoints", action="store_true", help="evaluate CACHE/ckpt instead of the shipped models")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None,
                    help="second stage on the same dense candidates, e.g. cell-gstn (the paper's guided STN) to "
                         "compare; results then go to benchmarks/detector_results_MODEL.json only")
    ap.add_argument("--dense-weights", type=float, nargs="+", default=None, metavar="A",
                    help="also print the balanced figures with the score p_dense**A * p_classifier**(1-A), thresholds "
                         "re-chosen on the same rows, for each A (a comparison; nothing is written for them)")
    ap.add_argument("--views", type=int, default=VIEWS, choices=[1, 2, 4, 8],
                    help=f"the classifier's test-time views (default {VIEWS}, the shipped count; another count is a "
                         "comparison: results then go to benchmarks/detector_results_viewsK.json only)")
    ap.add_argument("--mitos-mpp", type=float, default=None,
                    help="run the MITOS frames at this pixel size instead of the recorded 0.2455 (e.g. the corrected "
                         "0.368; matching stays 7.5 um at the recorded size); a comparison: nothing is written")
    a = ap.parse_args(argv)
    import torch

    from napari_mitosis.pipeline.detect import make_params
    from napari_mitosis.training.train_detector import write_models

    torch.set_num_threads(a.threads)
    cache = Path(a.cache)
    folder = None
    if a.checkpoints:  # the checkpoints as model files, thresholds from a placeholder operating point
        folder = tempfile.mkdtemp(prefix="detector_eval_")
        write_models(cache, out=folder, op=placeholder_op())
    if a.model:
        params = make_params(device="cpu", model=a.model, thresholds=LOOSE, dense_folder=folder, views=a.views)
    else:
        params = make_params(device="cpu", model_folder=folder, thresholds=LOOSE, dense_folder=folder, views=a.views)
    t0 = time.time()
    sets = validation_sets(cache)
    rows_by = {}
    for name, s in sets.items():
        run_mpp = a.mitos_mpp if name == "mitos14" and a.mitos_mpp else s["mpp"]  # matching stays at s["mpp"]
        rows_by[name] = score_images(s["images"], run_mpp, params)
        print(f"{name}: {len(s['images'])} images scored ({time.time() - t0:.0f} s)", flush=True)
    mit = choose(sets, rows_by, 0, MIT_DOMAINS)
    gran = choose(sets, rows_by, 1, GRAN_DOMAINS)
    la_bal, n_la = lookalike_share(sets, rows_by["lookalike"], mit["candidate"], mit["balanced"])
    la_scr, _ = lookalike_share(sets, rows_by["lookalike"], mit["candidate"], mit["screening"])
    op = dict(mitotic_figure=mit, granulocyte=gran, lookalike=dict(n=n_la, balanced=la_bal, screening=la_scr),
              models="checkpoints" if a.checkpoints else "shipped", views=a.views)
    compare = bool(a.model) or a.views != VIEWS or bool(a.mitos_mpp)
    if not compare:
        (cache / "operating_points.json").write_text(json.dumps(op, indent=1, default=float))
    suffix = (f"_{a.model}" if a.model else "") + (f"_views{a.views}" if a.views != VIEWS else "")
    if a.mitos_mpp:
        suffix += f"_mitos{a.mitos_mpp:g}"
    (ROOT / "benchmarks" / f"detector_results{suffix}.json").write_text(json.dumps(
        {k: ({kk: vv for kk, vv in v.items() if kk != "curve"} if isinstance(v, dict) else v) for k, v in op.items()},
        indent=1, default=float))
    for cname, o in (("mitotic_figure", mit), ("granulocyte", gran)):
        print(f"{cname}: candidates >= {o['candidate']}, balanced {o['balanced']}, screening {o['screening']}")
        for point in ("balanced", "screening"):
            for d, m in o[f"{point}_metrics"].items():
                print(f"  {point:9s} {d:28s} P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f}")
        for d, m in o["candidate_table"][str(o["candidate"])].items():
            print(f"  candidates {d:27s} recall {m['recall']:.3f}, {m['per_mm2']:.0f} per mm2")
    print(f"look-alikes detected: {la_bal:.3f} (balanced), {la_scr:.3f} (screening) of {n_la}")
    global DENSE_WEIGHT
    for w in a.dense_weights or ():
        DENSE_WEIGHT = w
        m = choose(sets, rows_by, 0, MIT_DOMAINS)
        g = choose(sets, rows_by, 1, GRAN_DOMAINS)
        la, _ = lookalike_share(sets, rows_by["lookalike"], m["candidate"], m["balanced"])
        f1 = ", ".join(f"{d} {v['f1']:.3f}" for d, v in m["balanced_metrics"].items())
        print(f"dense weight {w}: mitosis balanced {m['balanced']}: {f1}; eoe {g['balanced_metrics']['eoe']['f1']:.3f}; "
              f"look-alikes {la:.3f}")
    DENSE_WEIGHT = 0.5


def placeholder_op():
    """Operating points to write checkpoints as model files before any are chosen (LOOSE overrides them)."""
    def one():
        return dict(candidate=0.02, candidate_table={"0.02": {}}, balanced=0.5, screening=0.5,
                    balanced_metrics={}, screening_metrics={})

    return dict(mitotic_figure=one(), granulocyte=one(), lookalike=dict(n=0, balanced=0.0, screening=0.0))


if __name__ == "__main__":
    main()
