"""Detection evaluation: MITOS-ATYPIA-14 frames (per frame group) and the EoE eosinophil tiles.

A detection is a true positive when it lies within 7.5 um of a not yet matched
ground-truth object (one-to-one, greedy by score); F1 is micro-averaged over
images (TP, FP, FN summed over images).

Two models are evaluated:

- ``heldout``: a cell-gstn trained here with the shipped recipe on every source
  except MITOS-ATYPIA-14 and the EoE tiles of the shipped model's test fold
  (``python benchmarks/eval_detection.py train``). Never saw a MITOS frame or an
  evaluated EoE tile, so its MITOS and EoE numbers are honest.
- ``shipped``: the shipped cell-gstn. It was trained with all MITOS frame groups
  (its fold 0 has no MITOS group), so its MITOS numbers are in-sample for the
  classifier and reported only for reference; its EoE numbers are on its fold-0
  test tiles (held out).

Thresholds (minimum class probability, candidate darkness) are chosen on
validation data by frame group: for each MITOS frame group, on the other
three groups (leave-one-group-out), and for the EoE tiles, two folds by tile
block. Results go to ``benchmarks/detection_results.json``.

    python benchmarks/eval_detection.py train            # ~10 min on 1 CPU thread
    python benchmarks/eval_detection.py eval             # candidates + scores for every image, then F1
    # in-domain check: two models trained with two MITOS frame groups each, tested on the other two
    python benchmarks/eval_detection.py train --mitos-groups-out A03_02 A03_03 --name cell-gstn-mitosA
    python benchmarks/eval_detection.py train --mitos-groups-out A03_00 A03_01 --name cell-gstn-mitosB
    python benchmarks/eval_detection.py eval-indomain
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks"
EVAL_MODEL_DIR = OUT / "data" / "detect_eval"
#: EoE tile blocks held out by the shipped cell-gstn (its fold 0)
EOE_TEST_GROUPS = ["eoe/13_12", "eoe/13_14", "eoe/15_13", "eoe/16_10", "eoe/17_12", "eoe/17_13", "eoe/19_11"]


def train(args):
    import torch

    from napari_mitosis.training.cell_data import CLASSES, CellSampler, read_cells
    from napari_mitosis.models.gstn import WORK_MPP
    from napari_mitosis.models.registry import ModelSpec, save_model
    from napari_mitosis.training.train_classifier import TrainConfig, train_gstn

    torch.set_num_threads(1)
    t0 = time.time()
    table = read_cells(DATA)
    if args.mitos_groups_out:  # in-domain: train with the other MITOS frame groups
        keep = ~table.group.isin(EOE_TEST_GROUPS + [f"mitos14/{g}" for g in args.mitos_groups_out])
    else:
        keep = (table.source != "mitos14") & ~table.group.isin(EOE_TEST_GROUPS)
    train_t = table[keep & table["class"].isin(CLASSES)].reset_index(drop=True)
    print(train_t.groupby(["source", "class"]).size().unstack(fill_value=0), flush=True)
    cfg = TrainConfig(data=str(DATA), out=str(EVAL_MODEL_DIR), device="cpu")
    sampler = CellSampler(train_t, list(CLASSES), seed=77)
    gen = train_gstn(sampler, cfg, tuple(args.steps))
    while True:
        try:
            p = next(gen)
            print(p.message, flush=True)
        except StopIteration as stop:
            net, losses = stop.value
            break
    name = args.name
    spec = ModelSpec(name=name, task="classification", builder="napari_mitosis.models.gstn:build_gstn",
                     config={"n_classes": len(CLASSES), "loc_width": net.localizer.features[0][0].out_channels,
                             "cls_width": net.classifier.features[0][0].out_channels},
                     mpp=WORK_MPP, patch_size=128, classes=list(CLASSES), thresholds={}, metrics={"losses": losses},
                     training={"excluded": (args.mitos_groups_out or ["mitos14"]) + EOE_TEST_GROUPS, "steps": list(args.steps),
                               "minutes": (time.time() - t0) / 60})
    save_model(net, spec, f"# {name}\n\nEvaluation-only model: the shipped recipe without "
               f"{args.mitos_groups_out or 'MITOS-ATYPIA-14'} and without the shipped model's EoE test tiles. "
               "See benchmarks/eval_detection.py.\n",
               folder=EVAL_MODEL_DIR)
    print(f"saved to {EVAL_MODEL_DIR} in {(time.time() - t0) / 60:.1f} min", flush=True)



# --------------------------------------------------------------------------- scoring candidates
MITOS_MPP = 0.2455 * 1.5  # nominal 0.2455 um/px, corrected for the scale (see ../shared/data README and cell_data)
EOE_MPP = 0.5
LOOSE = {"detect_screen_dark": 1.0, "detect_screen_gran_dark": 0.7, "detect_screen_eosin": 0.8}


def _slide(img, mpp, name):
    import dask.array as da

    from napari_mitosis.io.slide import Slide

    return Slide(path=Path(name), levels=[da.from_array(img, chunks=(1024, 1024, 3))], mpp=mpp, format="image")


def score_candidates(model: str, folder: str | None, datasets=("mitos", "eoe")):
    """Every loosely screened candidate of every image with the model's probabilities."""
    from skimage.io import imread

    from napari_mitosis.pipeline.detect import detect_tile, make_params

    params = make_params(model=model, device="cpu", thresholds=LOOSE, model_folder=folder)
    rows = []
    pts = pd.read_csv(DATA / "mitosis/mitos_atypia14/points.csv")
    jobs = [("mitos", f, DATA / "mitosis/mitos_atypia14" / f, MITOS_MPP) for f in sorted(pts.frame.unique())
            if "mitos" in datasets]
    eoe = DATA / "granulocytes/eoe_eosinophils"
    for t in sorted((eoe / "tiles").glob("*.jpg")):
        import re

        m = re.search(r"x(\d+)_y(\d+)", t.name)
        g = f"eoe/{int(m.group(1)) // 1344}_{int(m.group(2)) // 1344}"
        if g in EOE_TEST_GROUPS and "eoe" in datasets:
            jobs.append(("eoe", "tiles/" + t.name, t, EOE_MPP))
    t0 = time.time()
    for k, (ds, name, path, mpp) in enumerate(jobs):
        img = imread(path)[..., :3]
        s = _slide(img, mpp, name)
        res = detect_tile(s, 0, 0, img.shape[1], img.shape[0], params, mpp, keep_all=True)
        d = res["detections"]
        d = d.assign(dataset=ds, image=name, blobs=res["candidates"])
        rows.append(d)
        if k % 20 == 0:
            print(f"{model}: {k + 1}/{len(jobs)} images, {time.time() - t0:.0f} s", flush=True)
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------- matching
def match(det_xy, det_score, gt_xy, radius):
    """Greedy one-to-one matching by descending score: (tp, fp, fn)."""
    from scipy.spatial import cKDTree

    if len(det_xy) == 0:
        return 0, 0, len(gt_xy)
    if len(gt_xy) == 0:
        return 0, len(det_xy), 0
    tree = cKDTree(gt_xy)
    used = np.zeros(len(gt_xy), bool)
    tp = 0
    for i in np.argsort(-np.asarray(det_score), kind="stable"):
        for j in sorted(tree.query_ball_point(det_xy[i], radius), key=lambda j: np.hypot(*(gt_xy[j] - det_xy[i]))):
            if not used[j]:
                used[j] = True
                tp += 1
                break
    return tp, len(det_xy) - tp, len(gt_xy) - tp


def detections_at(c: pd.DataFrame, cls: str, thr: dict, mpp: float):
    """Apply screening + class threshold + NMS to scored candidates of one image."""
    from napari_mitosis.core.screening import nms

    if cls == "mitotic_figure":
        ok = (c.dark >= thr["detect_screen_dark"]) & (c.p_mitotic_figure >= thr["detect_mitotic_figure"])
        sc = c.p_mitotic_figure
    else:
        ok = (((c.dark >= thr["detect_screen_gran_dark"]) & (c.eosin >= thr["detect_screen_eosin"]))
              | (c.dark >= thr["detect_screen_dark"])) & (c.p_granulocyte >= thr["detect_granulocyte"])
        sc = c.p_granulocyte
    d = c[ok.to_numpy()]
    s = sc[ok.to_numpy()].to_numpy()
    xy = d[["x", "y"]].to_numpy(float)
    k = nms(xy, s, 6.0 / mpp) if len(xy) else np.zeros(0, int)
    return xy[k], s[k]


def f1_of(counts):
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def evaluate_images(cands, truth, images, cls, thr, mpp, radius_um=7.5):
    out = []
    for im in images:
        c = cands[cands.image == im]
        xy, s = detections_at(c, cls, thr, mpp)
        out.append(match(xy, s, truth.get(im, np.zeros((0, 2))), radius_um / mpp))
    return out


def grid(cls):
    if cls == "mitotic_figure":
        for sd in (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8):
            for t in np.round(np.arange(0.3, 0.991, 0.025), 3):
                yield {"detect_screen_dark": sd, "detect_mitotic_figure": float(t)}
    else:
        for gd in (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4):
            for e in (0.8, 0.9, 1.0, 1.1, 1.2):
                for t in np.round(np.arange(0.3, 0.991, 0.05), 3):
                    yield {"detect_screen_gran_dark": gd, "detect_screen_eosin": e, "detect_granulocyte": float(t)}


def choose(cands, truth, images, cls, mpp, base):
    best, best_thr = -1, None
    for g in grid(cls):
        thr = dict(base, **g)
        f = f1_of(evaluate_images(cands, truth, images, cls, thr, mpp))["f1"]
        if f > best + 1e-9:
            best, best_thr = f, thr
    return best_thr, best


def evaluate(args):
    from napari_mitosis.core.decision import DEFAULT_THRESHOLDS

    results = {"criterion": "TP within 7.5 um of an unmatched ground-truth object, greedy by score; F1 micro over images",
               "anchors": {"MIDOG 2021 reference RetinaNet F1": 0.718, "MIDOG 2021 winner F1": 0.748},
               "mitos_mpp_used": MITOS_MPP, "models": {}}
    pts = pd.read_csv(DATA / "mitosis/mitos_atypia14/points.csv")
    mit_truth = {f: g[g.label == "mitosis"][["x", "y"]].to_numpy(float) for f, g in pts.groupby("frame")}
    eoe_pts = pd.read_csv(DATA / "granulocytes/eoe_eosinophils/points.csv")
    eoe_truth = {t: g[g["class"].isin(["Eos", "Papilla Eos"])][["x", "y"]].to_numpy(float) for t, g in eoe_pts.groupby("tile")}
    for name, model, folder in (("heldout", "cell-gstn-heldout", str(EVAL_MODEL_DIR)), ("shipped", "cell-gstn", None)):
        cache = OUT / "data" / "detect_eval" / f"candidates_{name}.csv"
        if cache.exists() and not args.rescore:
            cands = pd.read_csv(cache)
        else:
            # the shipped model was trained on every MITOS frame group: scored on the EoE test tiles only
            cands = score_candidates(model, folder, ("mitos", "eoe") if name == "heldout" else ("eoe",))
            cands.to_csv(cache, index=False)
        base = dict(DEFAULT_THRESHOLDS)
        res = {"candidates_per_image": cands.groupby("dataset").image.value_counts().groupby("dataset").mean().to_dict()}
        # MITOS: leave-one-frame-group-out threshold choice
        m = cands[cands.dataset == "mitos"]
        frames = sorted(pts.frame.unique()) if len(m) else []
        group = {f: Path(f).stem[:6] for f in frames}
        if len(m):
            per_group, pooled = {}, []
            for g in sorted(set(group.values())):
                val = [f for f in frames if group[f] != g]
                test = [f for f in frames if group[f] == g]
                thr, vf1 = choose(m, mit_truth, val, "mitotic_figure", MITOS_MPP, base)
                c = evaluate_images(m, mit_truth, test, "mitotic_figure", thr, MITOS_MPP)
                pooled += c
                per_group[g] = dict(f1_of(c), val_f1=vf1, thresholds={k: thr[k] for k in ("detect_screen_dark", "detect_mitotic_figure")})
            res["mitos"] = {"per_group_test": per_group, "pooled_test": f1_of(pooled)}
            thr_all, f_all = choose(m, mit_truth, frames, "mitotic_figure", MITOS_MPP, base)
            res["mitos"]["all_frames_thresholds"] = {k: thr_all[k] for k in ("detect_screen_dark", "detect_mitotic_figure")}
            res["mitos"]["all_frames_f1_at_own_thresholds"] = f_all
            # the same at the nominal pixel size's 7.5 um (30.5 px)
            c = []
            for g, r in per_group.items():
                thr = dict(base, **r["thresholds"])
                c += evaluate_images(m, mit_truth, [f for f in frames if group[f] == g], "mitotic_figure", thr, MITOS_MPP,
                                     radius_um=7.5 * MITOS_MPP / 0.2455)
            res["mitos"]["pooled_test_radius_30px"] = f1_of(c)
        # EoE: two folds of tile blocks
        e = cands[cands.dataset == "eoe"]
        tiles = sorted(e.image.unique()) if len(e) else []
        import re

        def block(t):
            mm = re.search(r"x(\d+)_y(\d+)", t)
            return f"{int(mm.group(1)) // 1344}_{int(mm.group(2)) // 1344}"

        blocks = sorted({block(t) for t in tiles})
        folds = [blocks[0::2], blocks[1::2]]
        pooled, per_fold = [], []
        for k in range(2):
            val = [t for t in tiles if block(t) not in folds[k]]
            test = [t for t in tiles if block(t) in folds[k]]
            thr, vf1 = choose(e, eoe_truth, val, "granulocyte", EOE_MPP, base)
            c = evaluate_images(e, eoe_truth, test, "granulocyte", thr, EOE_MPP)
            pooled += c
            per_fold.append(dict(f1_of(c), val_f1=vf1, test_blocks=folds[k],
                                 thresholds={k2: thr[k2] for k2 in ("detect_screen_gran_dark", "detect_screen_eosin", "detect_granulocyte")}))
        res["eoe"] = {"tiles": len(tiles), "per_fold_test": per_fold, "pooled_test": f1_of(pooled)}
        thr_e, _ = choose(e, eoe_truth, tiles, "granulocyte", EOE_MPP, base)
        res["eoe"]["all_tiles_thresholds"] = {k: thr_e[k] for k in ("detect_screen_gran_dark", "detect_screen_eosin", "detect_granulocyte")}
        # mitoses called on the EoE tiles (there are none in this biopsy): false positives per tile
        mthr = res["mitos"]["all_frames_thresholds"] if "mitos" in res else results["models"]["heldout"]["mitos"]["all_frames_thresholds"]
        fp = [len(detections_at(e[e.image == t], "mitotic_figure", dict(base, **mthr), EOE_MPP)[0]) for t in tiles]
        res["eoe"]["mitotic_false_positives_per_tile"] = float(np.mean(fp)) if fp else None
        results["models"][name] = res
        print(name, json.dumps({k: v.get("pooled_test") for k, v in res.items() if isinstance(v, dict) and "pooled_test" in v}, default=float), flush=True)
    (OUT / "detection_results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {OUT / 'detection_results.json'}")


INDOMAIN = {"cell-gstn-mitosA": ["A03_02", "A03_03"], "cell-gstn-mitosB": ["A03_00", "A03_01"]}


def evaluate_indomain(args):
    """Two models, each trained with two MITOS frame groups (and everything else but the EoE test
    blocks); each held-out group is tested with thresholds chosen on the other held-out group."""
    from skimage.io import imread

    from napari_mitosis.pipeline.detect import (
        DEFAULT_THRESHOLDS,
        detect_tile,
        make_params,
    )

    pts = pd.read_csv(DATA / "mitosis/mitos_atypia14/points.csv")
    truth = {f: g[g.label == "mitosis"][["x", "y"]].to_numpy(float) for f, g in pts.groupby("frame")}
    frames = sorted(pts.frame.unique())
    group = {f: Path(f).stem[:6] for f in frames}
    base = dict(DEFAULT_THRESHOLDS)
    out, pooled = {}, []
    for model, held in INDOMAIN.items():
        cache = EVAL_MODEL_DIR / f"candidates_{model}.csv"
        if cache.exists():
            cands = pd.read_csv(cache)
        else:
            params = make_params(model=model, device="cpu", model_folder=str(EVAL_MODEL_DIR),
                                 thresholds={"detect_screen_dark": 1.2, "detect_screen_gran_dark": 99.0})
            rows = []
            for f in frames:
                if group[f] not in held:
                    continue
                img = imread(DATA / "mitosis/mitos_atypia14" / f)[..., :3]
                res = detect_tile(_slide(img, MITOS_MPP, f), 0, 0, img.shape[1], img.shape[0], params, MITOS_MPP,
                                  keep_all=True)
                rows.append(res["detections"].assign(dataset="mitos", image=f))
            cands = pd.concat(rows, ignore_index=True)
            cands.to_csv(cache, index=False)
        for test_g, val_g in ((held[0], held[1]), (held[1], held[0])):
            val = [f for f in frames if group[f] == val_g]
            test = [f for f in frames if group[f] == test_g]
            thr, vf1 = choose(cands, truth, val, "mitotic_figure", MITOS_MPP, base)
            c = evaluate_images(cands, truth, test, "mitotic_figure", thr, MITOS_MPP)
            pooled += c
            out[test_g] = dict(f1_of(c), model=model, val_group=val_g, val_f1=vf1,
                               thresholds={k: thr[k] for k in ("detect_screen_dark", "detect_mitotic_figure")})
            print(test_g, out[test_g], flush=True)
    res = {"per_group_test": out, "pooled_test": f1_of(pooled),
           "protocol": "model trained with 2 MITOS frame groups (+ all other sources except the EoE test blocks); "
                       "each of the other 2 groups tested with thresholds chosen on the remaining one"}
    print("pooled", res["pooled_test"], flush=True)
    results = json.loads((OUT / "detection_results.json").read_text())
    results["mitos_in_domain"] = res
    (OUT / "detection_results.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, nargs=3, default=[178, 357, 267])
    t.add_argument("--mitos-groups-out", nargs="*", default=[], help="hold out only these MITOS frame groups")
    t.add_argument("--name", default="cell-gstn-heldout")
    i = sub.add_parser("eval-indomain", help="models trained with two MITOS frame groups, tested on the other two")
    i.set_defaults(func=evaluate_indomain)
    t.set_defaults(func=train)
    e = sub.add_parser("eval")
    e.add_argument("--rescore", action="store_true", help="score the candidates again (else reuse the cached CSVs)")
    e.set_defaults(func=evaluate)
    import torch

    torch.set_num_threads(1)
    a = ap.parse_args()
    a.func(a)
