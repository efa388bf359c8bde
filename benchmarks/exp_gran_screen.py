"""Experiment: tighter granulocyte-path screening (detect_screen_gran_dark, detect_screen_eosin).

A blob reaches the learned first pass when ``dark >= screen_dark OR (dark >= gran_dark AND eosin >=
eosin)`` (``core.screening.screen``). For each fixed (gran_dark, eosin) of a 5 x 5 grid, with
screen_dark = 1.5 (the operating point of benchmarks/screen_results.json), this measures:

- EoE granulocyte F1 on the 24 EoE test tiles, protocol of eval_screen.evaluate: score
  sqrt(mean of the 4 fold models' first-pass p_granulocyte x cell-gstn-heldout p_granulocyte), the
  two block folds, detect_granulocyte chosen on the other block fold (grid 0.3..0.99 step 0.05),
  TP/FP/FN pooled over the two test folds; and the in-sample best F1 over all 24 tiles.
- MITOS mitosis F1 (61 frames, score sqrt(out-of-fold first-pass p_mit x cell-gstn-heldout p_mit),
  leave-one-frame-group-out, detect_mitotic_figure chosen on the other groups, grid 0.3..0.99 step
  0.025). Two variants: ``ed`` = eval_detection.detections_at as it is (the mitotic class is screened
  by dark >= screen_dark only, so it does not depend on (gran_dark, eosin)), and ``union`` = as the
  pipeline does it (a blob admitted by the granulocyte path is scored for both classes, so it can be
  a mitotic figure too).
- The fraction of blobs screened in (first-pass work): relative to ALL hematoxylin blobs of each
  image (screen_features recomputed on every MITOS frame and every EoE tile, as the candidate table
  was built), and relative to the rows of the candidate table (loosely screened candidates only).

    python benchmarks/exp_gran_screen.py      # ~ a few minutes; writes benchmarks/gran_screen_results.json

``SHIPPED`` below is the operating point before this experiment (granulocyte path 0.8 / 0.9, with
class threshold 0.95). After it, eval_detection's granulocyte grid was widened (gran_dark up to 1.4,
eosin up to 1.2) and eval_screen.py chose 1.2 / 0.9 with class threshold 0.9 (now shipped).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent
GDS = (0.8, 0.9, 1.0, 1.1, 1.2)
EOS = (0.9, 1.0, 1.1, 1.2, 1.4)
SCREEN_DARK = 1.5
SHIPPED = (0.8, 0.9)  # the granulocyte path before this experiment
GRID_GRAN = [float(x) for x in np.round(np.arange(0.3, 0.991, 0.05), 3)]
GRID_MIT = [float(x) for x in np.round(np.arange(0.3, 0.991, 0.025), 3)]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, OUT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ES = _load("eval_screen")
ED = ES.ED


def union(dark, eosin, gd, e, sd=SCREEN_DARK):
    dark, eosin = np.asarray(dark, float), np.asarray(eosin, float)
    return (dark >= sd) | ((dark >= gd) & (eosin >= e))


def choose_on(split, truth, images, cls, mpp, base, key, grid):
    """eval_screen._choose with one free threshold ``key`` over ``grid`` (same tie rule)."""
    best, best_thr = -1, None
    for v in grid:
        thr = dict(base, **{key: v})
        f = ED.f1_of(ES._counts(split, truth, images, cls, thr, mpp))["f1"]
        if f > best + 1e-9:
            best, best_thr = f, thr
    return best_thr, best


def cv_f1(split, truth, folds, cls, mpp, base, key, grid):
    """Threshold chosen on each fold's validation images, counts pooled over the test folds."""
    pooled, per, per_image = [], {}, {}
    for fname, (val, test) in folds.items():
        thr, vf1 = choose_on(split, truth, val, cls, mpp, base, key, grid)
        cnt = ES._counts(split, truth, test, cls, thr, mpp)
        pooled += cnt
        per_image.update(dict(zip(test, cnt, strict=True)))
        per[fname] = {key: thr[key], "val_f1": vf1, **ED.f1_of(cnt)}
    return ED.f1_of(pooled), per, per_image


def boot_delta(a: dict, b: dict, n=2000, seed=0):
    """Paired bootstrap over images of F1(a) - F1(b) (per-image counts at the chosen thresholds)."""
    ims = sorted(a)
    A, B = np.array([a[i] for i in ims], float), np.array([b[i] for i in ims], float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ims), (n, len(ims)))

    def f1(C):
        tp, fp, fn = C[..., 0], C[..., 1], C[..., 2]
        return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)

    d = f1(A[idx].sum(1)) - f1(B[idx].sum(1))
    return {"mean": float(d.mean()), "sd": float(d.std()), "p2.5": float(np.percentile(d, 2.5)),
            "p97.5": float(np.percentile(d, 97.5))}


def all_blobs(table: pd.DataFrame) -> dict:
    """screen_features of every blob of every MITOS frame / EoE tile of the table (as build_dataset
    finds them, before the loose screen and the 3 um merge), by image."""
    from napari_mitosis.training.cell_data import read_rgb
    from napari_mitosis.training.train_screen import DEFAULT_DATA, screening_image
    from napari_mitosis.core.decision import DEFAULT_THRESHOLDS
    from napari_mitosis.core.screening import screen_features

    out = {}
    for (dataset, name), g in table[table.dataset.isin(["mitos", "eoe"])].groupby(["dataset", "image"]):
        sub = "mitosis/mitos_atypia14" if dataset == "mitos" else "granulocytes/eoe_eosinophils"
        img = read_rgb(DEFAULT_DATA / sub / name)
        mpp = float(g.mpp.iloc[0])
        rgb, ds, halo = screening_image(img, mpp)
        f = screen_features(rgb, ds * mpp, DEFAULT_THRESHOLDS["detect_nucleus_od"])
        x = (f["x"] - halo + 0.5) * ds - 0.5
        y = (f["y"] - halo + 0.5) * ds - 0.5
        h, w = img.shape[:2]
        own = ((x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)).to_numpy()
        out[name] = (dataset, str(g.group.iloc[0]), f[own].reset_index(drop=True))
    return out


def main():
    import torch

    torch.set_num_threads(1)
    from napari_mitosis.training.train_screen import LOOSE, build_dataset
    from napari_mitosis.core.decision import DEFAULT_THRESHOLDS

    t0 = time.time()
    ds = build_dataset()
    preds, _ = ES.train_folds(ds, 4.0, reuse=True)
    t = ES.join_gstn(ds["table"])
    print(f"loaded in {time.time() - t0:.0f} s", flush=True)
    base = dict(DEFAULT_THRESHOLDS, detect_screen_dark=SCREEN_DARK)
    res = {"protocol": __doc__.split("\n\n    python")[0], "screen_dark": SCREEN_DARK, "loose": LOOSE,
           "default_thresholds_in_code": dict(DEFAULT_THRESHOLDS), "configs": []}

    # ------------------------------------------------------------------ MITOS (as eval_screen.evaluate)
    mi = t[t.dataset == "mitos"].copy()
    oof = np.full((len(t), 3), np.nan, np.float32)
    for g in ES.GROUPS:
        m = (t.group == g).to_numpy()
        oof[m] = preds[g][m]
    s_mit = oof[(t.dataset == "mitos").to_numpy(), 0]
    assert np.isfinite(s_mit).all() and mi.g_mit.notna().all()
    prod_m = np.sqrt(s_mit * mi.g_mit.to_numpy())
    pts = pd.read_csv(ED.DATA / "mitosis/mitos_atypia14/points.csv")
    truth = {f: g[g.label == "mitosis"][["x", "y"]].to_numpy(float) for f, g in pts.groupby("frame")}
    frames = sorted(mi.image.unique())
    grp = dict(zip(mi.image, mi.group, strict=False))
    folds = {g: ([f for f in frames if grp[f] != g], [f for f in frames if grp[f] == g]) for g in ES.GROUPS}
    cm = ES._cands(mi, prod_m, np.zeros(len(mi)), "gstn")
    # (ed) eval_detection.detections_at: mitotic class screened by dark >= screen_dark only
    f_ed, per_ed, _ = cv_f1(ES._per_image(cm, "mitotic_figure"), truth, folds, "mitotic_figure", ED.MITOS_MPP, base,
                            "detect_mitotic_figure", GRID_MIT)
    res["mitos_ed_protocol"] = {"pooled": f_ed, "per_fold": per_ed,
                                "note": "eval_detection.detections_at screens the mitotic class by dark >= "
                                        "detect_screen_dark only: independent of (gran_dark, eosin)"}
    print("MITOS ed protocol", round(f_ed["f1"], 4), flush=True)
    mpos = (mi.label == "mitotic_figure").to_numpy()

    # ------------------------------------------------------------------ EoE test tiles
    eo_mask = t.group.isin(ED.EOE_TEST_GROUPS).to_numpy()
    eo = t[eo_mask].copy()
    assert eo.g_gran.notna().all()
    e_gran = np.mean([preds[g][eo_mask][:, 1] for g in ES.GROUPS], 0)
    ce = ES._cands(eo, np.zeros(len(eo)), np.sqrt(e_gran * eo.g_gran.to_numpy()), "gstn")
    esplit = ES._per_image(ce, "granulocyte")
    etruth, tiles, efolds, bf = ES.eoe_truth_and_folds(eo)
    n_gt = int(sum(len(etruth.get(tl, ())) for tl in tiles))
    res["eoe"] = {"tiles": len(tiles), "granulocytes_ground_truth": n_gt, "block_folds": bf}
    gpos_all = (t.dataset == "eoe").to_numpy() & (t.label == "granulocyte").to_numpy()

    # ------------------------------------------------------------------ all blobs (denominator of the work)
    t1 = time.time()
    blobs = all_blobs(t)
    print(f"all blobs recomputed in {time.time() - t1:.0f} s", flush=True)
    feat = {d: pd.concat([f for (dd, _, f) in blobs.values() if dd == d], ignore_index=True) for d in ("mitos", "eoe")}
    feat["eoe_test"] = pd.concat([f for (dd, g, f) in blobs.values() if dd == "eoe" and g in ED.EOE_TEST_GROUPS],
                                 ignore_index=True)
    # cross-check: loose-screened blobs vs the table's rows (these are merged at 3 um afterwards)
    tab = {"mitos": t[t.dataset == "mitos"], "eoe": t[t.dataset == "eoe"], "eoe_test": t[eo_mask]}
    res["blob_counts"] = {
        d: {"images": int(tab[d].image.nunique()), "all_blobs": len(feat[d]),
            "loose_screened_blobs": int(union(feat[d].dark, feat[d].eosin, LOOSE["detect_screen_gran_dark"],
                                              LOOSE["detect_screen_eosin"], LOOSE["detect_screen_dark"]).sum()),
            "table_rows": len(tab[d])} for d in feat}
    hc = pd.read_csv(ED.EVAL_MODEL_DIR / "candidates_heldout.csv").groupby(["dataset", "image"]).blobs.first()
    res["blob_counts"]["check_detect_tile_blobs"] = {d: int(hc[d].sum()) for d in ("mitos", "eoe")}
    print(json.dumps(res["blob_counts"]), flush=True)

    # ------------------------------------------------------------------ the grid
    ship_counts = {}
    for gd in GDS:
        for e in EOS:
            r = {"gran_dark": gd, "eosin": e}
            thr = dict(base, detect_screen_gran_dark=gd, detect_screen_eosin=e)
            # EoE granulocyte F1
            f, per, pim = cv_f1(esplit, etruth, efolds, "granulocyte", ED.EOE_MPP, thr, "detect_granulocyte", GRID_GRAN)
            thr_in, f_in = choose_on(esplit, etruth, tiles, "granulocyte", ED.EOE_MPP, thr, "detect_granulocyte", GRID_GRAN)
            r["eoe_f1_pooled_test"] = f["f1"]
            r["eoe_pooled_test"] = f
            r["eoe_per_fold"] = per
            r["eoe_f1_in_sample"] = f_in
            r["eoe_in_sample_detect_granulocyte"] = thr_in["detect_granulocyte"]
            # MITOS, pipeline-faithful: mitotic detections from any blob passing the union
            ok = union(mi.dark, mi.eosin, gd, e)
            c = cm[ok & (cm.p_mitotic_figure >= 0.3).to_numpy()]
            msplit = {im: g for im, g in c.groupby("image")}
            fm, perm, mim = cv_f1(msplit, truth, folds, "mitotic_figure", ED.MITOS_MPP,
                                  dict(thr, detect_screen_dark=-np.inf), "detect_mitotic_figure", GRID_MIT)
            for v in perm.values():
                v["detect_screen_dark"] = SCREEN_DARK
            r["mitos_f1_ed_protocol"] = f_ed["f1"]
            r["mitos_f1_union"] = fm["f1"]
            r["mitos_union_pooled"] = fm
            r["mitos_union_per_fold"] = perm
            # screening: fraction of all blobs / of the table's loose candidates
            for d in ("mitos", "eoe", "eoe_test"):
                r[f"frac_all_blobs_{d}"] = float(union(feat[d].dark, feat[d].eosin, gd, e).mean())
                r[f"frac_all_blobs_gran_path_only_{d}"] = float((union(feat[d].dark, feat[d].eosin, gd, e)
                                                                 & (feat[d].dark < SCREEN_DARK)).mean())
                r[f"frac_table_rows_{d}"] = float(union(tab[d].dark, tab[d].eosin, gd, e).mean())
            # labelled positives among the candidates that pass (screen recall)
            r["eoe_granulocyte_candidates_passing_all_tiles"] = float(union(t.dark[gpos_all], t.eosin[gpos_all], gd, e).mean())
            r["eoe_granulocyte_candidates_all_tiles"] = int(gpos_all.sum())
            r["mitos_mitosis_candidates_passing"] = float(union(mi.dark[mpos], mi.eosin[mpos], gd, e).mean())
            if (gd, e) == SHIPPED:
                ship_counts = {"eoe": pim, "mitos": mim}
            r["_counts"] = {"eoe": pim, "mitos": mim}
            res["configs"].append(r)
            print(f"gd={gd} e={e}: EoE {f['f1']:.3f} (in-sample {f_in:.3f}), MITOS union {fm['f1']:.3f}, "
                  f"frac MITOS {r['frac_all_blobs_mitos']:.3f} EoE {r['frac_all_blobs_eoe']:.3f}", flush=True)
    for r in res["configs"]:
        cnt = r.pop("_counts")
        r["eoe_delta_vs_shipped_bootstrap_tiles"] = boot_delta(cnt["eoe"], ship_counts["eoe"])
        r["mitos_union_delta_vs_shipped_bootstrap_frames"] = boot_delta(cnt["mitos"], ship_counts["mitos"])
    res["minutes"] = (time.time() - t0) / 60
    (OUT / "gran_screen_results.json").write_text(json.dumps(res, indent=1, default=float))
    cols = ["gran_dark", "eosin", "eoe_f1_pooled_test", "eoe_f1_in_sample", "mitos_f1_ed_protocol", "mitos_f1_union",
            "frac_all_blobs_mitos", "frac_all_blobs_eoe", "frac_table_rows_mitos", "frac_table_rows_eoe",
            "eoe_granulocyte_candidates_passing_all_tiles"]
    print(pd.DataFrame([{k: r[k] for k in cols} for r in res["configs"]]).round(3).to_string(index=False))
    print(f"wrote {OUT / 'gran_screen_results.json'} in {res['minutes']:.1f} min")


if __name__ == "__main__":
    main()
