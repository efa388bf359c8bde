"""Evaluation of cell-screen, the learned first pass (cascade stage) of whole-slide detection.

Protocol
--------
Candidates: every loosely screened candidate (``LOOSE`` of eval_detection.py) of
every labelled image, built by ``training/train_screen.py build`` (cached in
``benchmarks/data/screen/candidates.npz``). On the 61 labelled MITOS-ATYPIA-14
frames and the 24 EoE test tiles they are exactly the candidates of
``benchmarks/data/detect_eval/candidates_heldout.csv`` (joined by position), so
the GSTN-heldout probabilities of the same candidates are compared and combined.

Folds: MITOS leave-one-frame-group-out. Fold ``g`` trains on every labelled
candidate except those of MITOS group ``g`` and of the 7 EoE test blocks
(``EOE_TEST_GROUPS``) and scores group ``g`` (out-of-fold scores) and the EoE test
tiles. Every threshold applied to a test fold is chosen on other data:

- (b) cascade keep threshold for MITOS group ``g``: the largest threshold keeping
  >= 98% of the positive candidates of the OTHER three groups, on their
  out-of-fold scores (each scored by the model that did not see it); for the EoE
  test tiles: on the other half of the test blocks (the two block folds of
  eval_detection.py).
- (c) detection thresholds: eval_detection.py's grid and ``choose`` on the other
  three MITOS groups' out-of-fold scores / the other EoE block fold.

EoE numbers are given for each fold model (all four never saw the EoE test
blocks) and averaged.

Fair comparisons: the fold models saw three MITOS frame groups of the same slide
A03, while cell-gstn-heldout saw no MITOS frame. So a screen model is also
trained without any MITOS frame (``nomitos``) and the out-of-fold screen scores
are compared with the in-domain GSTNs of eval_detection.py (``eval-indomain``,
trained with two MITOS groups) on their held-out groups.

    python -m napari_mitosis.training.train_screen build   # candidates (~1 min)
    python benchmarks/eval_screen.py --minutes 4          # 4 fold models + 1 without MITOS (~22 min, 1 thread) + evaluation
    python benchmarks/eval_screen.py --reuse              # evaluation only, from the cached fold predictions
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
CACHE = OUT / "data" / "screen"
GROUPS = ["mitos14/A03_00", "mitos14/A03_01", "mitos14/A03_02", "mitos14/A03_03"]
KEEP = 0.98


def _eval_detection():
    spec = importlib.util.spec_from_file_location("eval_detection", OUT / "eval_detection.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ED = _eval_detection()


def auc(pos, neg) -> float:
    from scipy.stats import rankdata

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def join_gstn(table: pd.DataFrame) -> pd.DataFrame:
    """GSTN-heldout probabilities and refined positions of the same candidates (MITOS frames, EoE test tiles)."""
    g = pd.read_csv(ED.EVAL_MODEL_DIR / "candidates_heldout.csv")
    key = lambda im, x, y: im + "|" + np.round(x, 2).astype(str) + "|" + np.round(y, 2).astype(str)
    g.index = key(g.image, g.cand_x, g.cand_y)
    k = key(table.image, table.x, table.y)
    t = table.copy()
    for c_out, c_in in (("g_mit", "p_mitotic_figure"), ("g_gran", "p_granulocyte"), ("gx", "x"), ("gy", "y")):
        t[c_out] = g[c_in].reindex(k).to_numpy()
    return t


def train_folds(ds, minutes, reuse):
    import torch

    from napari_mitosis.models.screen_net import CLASSES
    from napari_mitosis.training.train_screen import predict_patches, train_screen

    tb, P = ds["table"], ds["patches"]
    eoe_test = tb.group.isin(ED.EOE_TEST_GROUPS).to_numpy()
    preds, hist = {}, {}
    for g in GROUPS + ["nomitos"]:
        f = CACHE / f"fold_{g.split('/')[-1]}.npz"
        if reuse and f.exists():
            z = np.load(f)
            preds[g] = z["probs"]
            hist[g] = json.loads(str(z["hist"]))
            continue
        out = (tb.dataset == "mitos").to_numpy() if g == "nomitos" else (tb.group == g).to_numpy()
        train = tb.label.isin(CLASSES).to_numpy() & ~out & ~eoe_test
        print(f"fold {g}: {train.sum()} training candidates", flush=True)
        net, h = train_screen(P[train], tb[train].reset_index(drop=True), minutes=minutes, seed=1,
                              log=lambda m: print("  " + m, flush=True) if "000 " in m else None)
        score = out | tb.group.isin(ED.EOE_TEST_GROUPS).to_numpy()
        probs = np.full((len(tb), 3), np.nan, np.float32)
        probs[score] = predict_patches(net, P[score])
        torch.save(net.state_dict(), CACHE / f"fold_{g.split('/')[-1]}.pt")
        np.savez(f, probs=probs, hist=json.dumps(h))
        preds[g], hist[g] = probs, h
    return preds, hist


def _cands(t: pd.DataFrame, p_mit, p_gran, pos="gstn") -> pd.DataFrame:
    """A candidate table in eval_detection's format with the given scores."""
    x, y = (t.gx, t.gy) if pos == "gstn" else (t.x, t.y)
    return pd.DataFrame({"image": t.image.to_numpy(), "x": np.asarray(x, float), "y": np.asarray(y, float),
                         "dark": t.dark.to_numpy(), "eosin": t.eosin.to_numpy(),
                         "p_mitotic_figure": np.asarray(p_mit, float), "p_granulocyte": np.asarray(p_gran, float)})


def _per_image(c: pd.DataFrame, cls: str) -> dict:
    """Candidates by image, without those no grid threshold can keep (same results, much faster)."""
    if cls == "mitotic_figure":
        c = c[(c.dark >= 1.0) & (c.p_mitotic_figure >= 0.3)]
    else:
        c = c[c.p_granulocyte >= 0.3]
    return {im: g for im, g in c.groupby("image")}


def _counts(split, truth, images, cls, thr, mpp):
    empty = pd.DataFrame(columns=["x", "y", "dark", "eosin", "p_mitotic_figure", "p_granulocyte"], dtype=float)
    out = []
    for im in images:
        xy, s = ED.detections_at(split.get(im, empty), cls, thr, mpp)
        out.append(ED.match(xy, s, truth.get(im, np.zeros((0, 2))), 7.5 / mpp))
    return out


def _choose(split, truth, images, cls, mpp, base):
    """eval_detection.choose on pre-split candidates (same grid, same tie rule)."""
    best, best_thr = -1, None
    for g in ED.grid(cls):
        thr = dict(base, **g)
        f = ED.f1_of(_counts(split, truth, images, cls, thr, mpp))["f1"]
        if f > best + 1e-9:
            best, best_thr = f, thr
    return best_thr, best


def detection_f1(t, scores: dict, cls, mpp, truth, folds):
    """F1 of each scoring variant; thresholds chosen on the complement of each test fold."""
    from napari_mitosis.core.decision import DEFAULT_THRESHOLDS

    base = dict(DEFAULT_THRESHOLDS)
    out = {}
    for name, (p, pos) in scores.items():
        c = _cands(t, p if cls == "mitotic_figure" else np.zeros(len(t)), p if cls == "granulocyte" else np.zeros(len(t)), pos)
        pooled, per = [], {}
        for fname, (val, test) in folds.items():
            split = _per_image(c, cls)
            thr, vf1 = _choose(split, truth, val, cls, mpp, base)
            cnt = _counts(split, truth, test, cls, thr, mpp)
            pooled += cnt
            keys = [k for k in thr if k.startswith("detect_") and k in dict(next(ED.grid(cls)))]
            per[fname] = dict(ED.f1_of(cnt), val_f1=vf1, thresholds={k: thr[k] for k in keys})
        out[name] = {"per_fold": per, "pooled": ED.f1_of(pooled)}
    return out


def eoe_truth_and_folds(eo: pd.DataFrame):
    """Ground-truth granulocytes per EoE test tile, the tiles, and the two folds of tile blocks
    (``{"blocks0": (validation tiles, test tiles), ...}``, and the blocks of each fold)."""
    eoe_pts = pd.read_csv(ED.DATA / "granulocytes/eoe_eosinophils/points.csv")
    etruth = {tl: g[g["class"].isin(["Eos", "Papilla Eos"])][["x", "y"]].to_numpy(float) for tl, g in eoe_pts.groupby("tile")}
    tiles = sorted(eo.image.unique())
    block = {tl: eo.group[eo.image == tl].iloc[0].split("/")[1] for tl in tiles}
    blocks = sorted(set(block.values()))
    bf = [blocks[0::2], blocks[1::2]]
    efolds = {f"blocks{k}": ([tl for tl in tiles if block[tl] not in bf[k]], [tl for tl in tiles if block[tl] in bf[k]])
              for k in range(2)}
    return etruth, tiles, efolds, bf


def evaluate(ds, preds):
    from napari_mitosis.training.train_screen import keep_threshold
    from napari_mitosis.core.decision import DEFAULT_THRESHOLDS
    from napari_mitosis.core.screening import screen

    t = join_gstn(ds["table"])
    res = {"protocol": __doc__.split("Protocol\n--------\n")[1].split("\n\n    python")[0]}
    # ------------------------------------------------------------- MITOS (out-of-fold scores)
    mi = t[t.dataset == "mitos"].copy()
    oof = np.full((len(t), 3), np.nan, np.float32)
    for g in GROUPS:
        m = (t.group == g).to_numpy()
        oof[m] = preds[g][m]
    mi[["s_mit", "s_gran", "s_other"]] = oof[(t.dataset == "mitos").to_numpy()]
    mi["s_keep"] = mi[["s_mit", "s_gran"]].max(axis=1)
    assert mi.g_mit.notna().all(), "MITOS candidates missing from candidates_heldout.csv"
    default = screen(mi, DEFAULT_THRESHOLDS["detect_screen_dark"], DEFAULT_THRESHOLDS["detect_screen_gran_dark"],
                     DEFAULT_THRESHOLDS["detect_screen_eosin"])
    mi["default_screen"] = default
    pos = (mi.label == "mitotic_figure").to_numpy()
    look = (mi.status == "hard_negative").to_numpy()
    oth = (mi.label == "other").to_numpy()
    per, keep_thr = {}, {}
    for g in GROUPS + ["pooled"]:
        te = np.ones(len(mi), bool) if g == "pooled" else (mi.group == g).to_numpy()
        r = {"candidates": int(te.sum()), "mitosis_candidates": int((te & pos).sum()), "lookalike_candidates": int((te & look).sum())}
        for nm, col in (("screen", "s_mit"), ("gstn_heldout", "g_mit")):
            s = mi[col].to_numpy()
            r[f"auc_{nm}_mitosis_vs_lookalike"] = auc(s[te & pos], s[te & look])
            r[f"auc_{nm}_mitosis_vs_all_other"] = auc(s[te & pos], s[te & oth])
        s = np.sqrt(mi.s_mit.to_numpy() * mi.g_mit.to_numpy())
        r["auc_product_mitosis_vs_lookalike"] = auc(s[te & pos], s[te & look])
        r["auc_product_mitosis_vs_all_other"] = auc(s[te & pos], s[te & oth])
        if g != "pooled":
            tr = ~te
            for key, col in (("keep", "s_keep"), ("keep_mitotic_figure", "s_mit")):
                thr = keep_threshold(mi[col].to_numpy()[tr], pos[tr], KEEP)
                keep_thr.setdefault(g, {})[key] = thr
                kept = mi[col].to_numpy() >= thr
                r[f"cascade_{key}"] = {
                    "threshold": thr, "positives_kept": float(kept[te & pos].mean()),
                    "candidates_rejected": float(1 - kept[te].mean()),
                    "default_screened_rejected": float(1 - kept[te & default].mean()),
                    "lookalikes_rejected": float(1 - kept[te & look].mean()) if (te & look).any() else None}
        per[g] = r
    # pooled cascade: each group at its own (other-group) threshold
    for key, col in (("keep", "s_keep"), ("keep_mitotic_figure", "s_mit")):
        kept = np.zeros(len(mi), bool)
        for g in GROUPS:
            te = (mi.group == g).to_numpy()
            kept[te] = mi[col].to_numpy()[te] >= keep_thr[g][key]
        per["pooled"][f"cascade_{key}"] = {
            "positives_kept": float(kept[pos].mean()), "candidates_rejected": float(1 - kept.mean()),
            "default_screened_rejected": float(1 - kept[default].mean()), "lookalikes_rejected": float(1 - kept[look].mean())}
    res["mitos"] = {"per_group": per}
    # (c) detection F1, MITOS
    pts = pd.read_csv(ED.DATA / "mitosis/mitos_atypia14/points.csv")
    truth = {f: g[g.label == "mitosis"][["x", "y"]].to_numpy(float) for f, g in pts.groupby("frame")}
    frames = sorted(mi.image.unique())
    grp = dict(zip(mi.image, mi.group, strict=False))
    folds = {g: ([f for f in frames if grp[f] != g], [f for f in frames if grp[f] == g]) for g in GROUPS}
    casc = np.zeros(len(mi))
    for g in GROUPS:
        te = (mi.group == g).to_numpy()
        casc[te] = np.where(mi.s_keep.to_numpy()[te] >= keep_thr[g]["keep"], mi.g_mit.to_numpy()[te], 0.0)
    variants = {"gstn_heldout": (mi.g_mit.to_numpy(), "gstn"),
                "screen_alone": (mi.s_mit.to_numpy(), "cand"),
                "cascade_keep_then_gstn": (casc, "gstn"),
                "product_sqrt_screen_x_gstn": (np.sqrt(mi.s_mit.to_numpy() * mi.g_mit.to_numpy()), "gstn")}
    res["mitos"]["detection"] = detection_f1(mi, variants, "mitotic_figure", ED.MITOS_MPP, truth, folds)
    # ------------------------------------------------------------- EoE test tiles, each fold model
    eo = t[t.group.isin(ED.EOE_TEST_GROUPS)].copy()
    assert eo.g_gran.notna().all(), "EoE candidates missing from candidates_heldout.csv"
    etruth, tiles, efolds, _ = eoe_truth_and_folds(eo)
    gpos = (eo.label == "granulocyte").to_numpy()
    goth = (eo.label == "other").to_numpy()
    edef = screen(eo, DEFAULT_THRESHOLDS["detect_screen_dark"], DEFAULT_THRESHOLDS["detect_screen_gran_dark"],
                  DEFAULT_THRESHOLDS["detect_screen_eosin"])
    eres = {}
    for g in GROUPS:
        p = preds[g][t.group.isin(ED.EOE_TEST_GROUPS).to_numpy()]
        s_keep, s_gran = p[:, :2].max(1), p[:, 1]
        r = {"auc_screen_granulocyte_vs_other": auc(s_gran[gpos], s_gran[goth]),
             "auc_gstn_heldout_granulocyte_vs_other": auc(eo.g_gran.to_numpy()[gpos], eo.g_gran.to_numpy()[goth])}
        kept = np.zeros(len(eo), bool)
        casc = np.zeros(len(eo))
        for k, (val, test) in efolds.items():
            v = eo.image.isin(val).to_numpy()
            te = eo.image.isin(test).to_numpy()
            thr = keep_threshold(s_keep[v], gpos[v], KEEP)
            kept[te] = s_keep[te] >= thr
            r[f"keep_threshold_{k}"] = thr
        casc = np.where(kept, eo.g_gran.to_numpy(), 0.0)
        r["cascade_keep"] = {"positives_kept": float(kept[gpos].mean()), "candidates_rejected": float(1 - kept.mean()),
                             "default_screened_rejected": float(1 - kept[edef].mean())}
        r["detection"] = detection_f1(eo, {"gstn_heldout": (eo.g_gran.to_numpy(), "gstn"),
                                           "screen_alone": (s_gran, "cand"),
                                           "cascade_keep_then_gstn": (casc, "gstn"),
                                           "product_sqrt_screen_x_gstn": (np.sqrt(s_gran * eo.g_gran.to_numpy()), "gstn")},
                                      "granulocyte", ED.EOE_MPP, etruth, efolds)
        eres[g.split("/")[1] + "_model"] = r
    mean = lambda f: float(np.mean([f(r) for r in eres.values()]))
    res["eoe"] = {"tiles": len(tiles), "granulocyte_candidates": int(gpos.sum()), "candidates": len(eo), "per_model": eres,
                  "mean_over_models": {
                      "auc_screen_granulocyte_vs_other": mean(lambda r: r["auc_screen_granulocyte_vs_other"]),
                      "auc_gstn_heldout_granulocyte_vs_other": eres[next(iter(eres))]["auc_gstn_heldout_granulocyte_vs_other"],
                      "cascade_positives_kept": mean(lambda r: r["cascade_keep"]["positives_kept"]),
                      "cascade_candidates_rejected": mean(lambda r: r["cascade_keep"]["candidates_rejected"]),
                      **{f"f1_{v}": mean(lambda r, v=v: r["detection"][v]["pooled"]["f1"])
                         for v in ("gstn_heldout", "screen_alone", "cascade_keep_then_gstn", "product_sqrt_screen_x_gstn")}}}
    # ------------------------------------------------------------- fair comparisons
    # (1) a screen model trained WITHOUT any MITOS frame (like cell-gstn-heldout)
    cmp = {}
    if "nomitos" in preds:
        s = preds["nomitos"][(t.dataset == "mitos").to_numpy(), 0]
        cmp["screen_without_mitos"] = {
            "auc_mitosis_vs_lookalike": auc(s[pos], s[look]), "auc_mitosis_vs_all_other": auc(s[pos], s[oth]),
            "auc_gstn_heldout_mitosis_vs_lookalike": auc(mi.g_mit.to_numpy()[pos], mi.g_mit.to_numpy()[look]),
            "auc_gstn_heldout_mitosis_vs_all_other": auc(mi.g_mit.to_numpy()[pos], mi.g_mit.to_numpy()[oth])}
        sk = preds["nomitos"][(t.dataset == "mitos").to_numpy(), :2].max(1)
        for thr in (0.05, 0.1, 0.2, 0.3, 0.5):
            cmp["screen_without_mitos"][f"keep_at_{thr}"] = {
                "positives_kept": float((sk[pos] >= thr).mean()), "candidates_rejected": float((sk < thr).mean())}
        nm_var = {"screen_without_mitos_alone": (preds["nomitos"][(t.dataset == "mitos").to_numpy(), 0], "cand"),
                  "product_sqrt_screen_without_mitos_x_gstn": (np.sqrt(preds["nomitos"][(t.dataset == "mitos").to_numpy(), 0]
                                                                        * mi.g_mit.to_numpy()), "gstn")}
        cmp["screen_without_mitos"]["detection"] = detection_f1(mi, nm_var, "mitotic_figure", ED.MITOS_MPP, truth, folds)
    # (2) in-domain GSTNs (trained with two MITOS groups, eval_detection.py eval-indomain) on their held-out
    # groups, candidates screened at dark >= 1.2 (those in their cached CSVs)
    ind = {}
    for model, held in ED.INDOMAIN.items():
        f = ED.EVAL_MODEL_DIR / f"candidates_{model}.csv"
        if not f.exists():
            continue
        c = pd.read_csv(f)
        kk = c.image + "|" + np.round(c.cand_x, 2).astype(str) + "|" + np.round(c.cand_y, 2).astype(str)
        pm = pd.Series(c.p_mitotic_figure.to_numpy(), index=kk)
        km = mi.image + "|" + np.round(mi.x, 2).astype(str) + "|" + np.round(mi.y, 2).astype(str)
        gi = pm.reindex(km).to_numpy()
        sel = np.isin(mi.group, [f"mitos14/{h}" for h in held]) & ~np.isnan(gi)
        ind[model] = {"held_out_groups": held, "candidates_joined": int(sel.sum()),
                      "mitosis": int((sel & pos).sum()), "lookalike": int((sel & look).sum())}
        for nm, sc in (("gstn_indomain", gi), ("screen_oof", mi.s_mit.to_numpy())):
            ind[model][f"auc_{nm}_mitosis_vs_lookalike"] = auc(sc[sel & pos], sc[sel & look])
            ind[model][f"auc_{nm}_mitosis_vs_all_other"] = auc(sc[sel & pos], sc[sel & oth])
    cmp["gstn_in_domain"] = ind
    res["comparisons"] = cmp
    # ------------------------------------------------------------- the shipped keep threshold
    # pooled out-of-fold scores: MITOS mitoses (OOF) + EoE test granulocytes (mean over fold models)
    e_keep = np.mean([preds[g][t.group.isin(ED.EOE_TEST_GROUPS).to_numpy()][:, :2].max(1) for g in GROUPS], 0)
    e_mit = np.mean([preds[g][t.group.isin(ED.EOE_TEST_GROUPS).to_numpy()][:, 0] for g in GROUPS], 0)
    e_gr = np.mean([preds[g][t.group.isin(ED.EOE_TEST_GROUPS).to_numpy()][:, 1] for g in GROUPS], 0)
    s_all = np.concatenate([mi.s_keep.to_numpy(), e_keep])
    pos_all = np.concatenate([pos, gpos])
    keep_m, keep_e = keep_threshold(mi.s_keep.to_numpy(), pos, KEEP), keep_threshold(e_keep, gpos, KEEP)
    res["shipped_keep_threshold"] = {
        "keep": min(keep_m, keep_e),
        "keep_mitos_only": keep_m, "keep_eoe_only": keep_e,
        "keep_pooled_positives": keep_threshold(s_all, pos_all, KEEP),
        "keep_mitotic_figure": keep_threshold(mi.s_mit.to_numpy(), pos, KEEP),
        "keep_granulocyte": keep_threshold(e_gr, gpos, KEEP),
        "on": "max(p_mitotic_figure, p_granulocyte) >= keep; keep = the smaller of the thresholds that keep >= 98% of "
              "the MITOS mitosis candidates (out-of-fold scores) and >= 98% of the EoE test-block granulocyte candidates "
              "(mean of the fold models, none saw those blocks); keep_pooled_positives: one threshold for both pooled"}
    kt = res["shipped_keep_threshold"]["keep"]
    res["shipped_keep_threshold"]["oof_effect_of_keep_pooled_positives"] = {
        "mitos_positives_kept": float((mi.s_keep.to_numpy()[pos] >= res["shipped_keep_threshold"]["keep_pooled_positives"]).mean()),
        "mitos_candidates_rejected": float((mi.s_keep.to_numpy() < res["shipped_keep_threshold"]["keep_pooled_positives"]).mean())}
    res["shipped_keep_threshold"]["oof_effect"] = {
        "mitos_positives_kept": float((mi.s_keep.to_numpy()[pos] >= kt).mean()),
        "mitos_candidates_rejected": float((mi.s_keep.to_numpy() < kt).mean()),
        "mitos_default_screened_rejected": float((mi.s_keep.to_numpy()[default] < kt).mean()),
        "eoe_positives_kept": float((e_keep[gpos] >= kt).mean()),
        "eoe_candidates_rejected": float((e_keep < kt).mean())}
    del e_mit
    # ------------------------------------------------------------- the shipped operating point
    # detection with the cascade scores each class by sqrt(first pass x cell-gstn); its thresholds are chosen
    # here by eval_detection's grid on ALL validation images: the four MITOS groups (out-of-fold first-pass
    # scores x cell-gstn-heldout) and the 24 EoE test tiles (fold models' mean x cell-gstn-heldout)
    e_gran = np.mean([preds[g][t.group.isin(ED.EOE_TEST_GROUPS).to_numpy()][:, 1] for g in GROUPS], 0)
    cm = _cands(mi, np.sqrt(mi.s_mit.to_numpy() * mi.g_mit.to_numpy()), np.zeros(len(mi)), "gstn")
    thr_m, f1_m = _choose(_per_image(cm, "mitotic_figure"), truth, frames, "mitotic_figure", ED.MITOS_MPP,
                          dict(DEFAULT_THRESHOLDS))
    ce = _cands(eo, np.zeros(len(eo)), np.sqrt(e_gran * eo.g_gran.to_numpy()), "gstn")
    thr_e, f1_e = _choose(_per_image(ce, "granulocyte"), etruth, tiles, "granulocyte", ED.EOE_MPP, dict(DEFAULT_THRESHOLDS))
    res["shipped_operating_point"] = {
        "thresholds": {**{k: thr_m[k] for k in ("detect_screen_dark", "detect_mitotic_figure")},
                       **{k: thr_e[k] for k in ("detect_screen_gran_dark", "detect_screen_eosin", "detect_granulocyte")}},
        "validation_f1": {"mitos_all_groups_oof": f1_m, "eoe_test_tiles": f1_e},
        "score": "sqrt(p_first_pass * p_cell_gstn) per class",
        "note": "chosen on all validation images (in-sample for the choice, like any final operating point); "
                "the per-fold F1s above are the honest estimate"}
    p = per["pooled"]
    d = res["mitos"]["detection"]
    res["summary"] = {
        "mitos_auc_mitosis_vs_lookalike": {"screen": p["auc_screen_mitosis_vs_lookalike"], "gstn_heldout": p["auc_gstn_heldout_mitosis_vs_lookalike"]},
        "mitos_auc_mitosis_vs_all_other": {"screen": p["auc_screen_mitosis_vs_all_other"], "gstn_heldout": p["auc_gstn_heldout_mitosis_vs_all_other"]},
        "mitos_cascade_keep": p["cascade_keep"],
        "mitos_f1": {k: v["pooled"]["f1"] for k, v in d.items()},
        "eoe": res["eoe"]["mean_over_models"],
        "keep_threshold": kt,
        "screen_without_mitos": {k: v for k, v in cmp.get("screen_without_mitos", {}).items() if k.startswith("auc")},
    }
    return res


def main(argv=None):
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4.0, help="training time per fold model")
    ap.add_argument("--reuse", action="store_true", help="reuse cached fold predictions")
    a = ap.parse_args(argv)
    from napari_mitosis.training.train_screen import LOOSE, build_dataset

    assert LOOSE == ED.LOOSE, "train_screen.LOOSE must equal eval_detection.LOOSE"
    t0 = time.time()
    ds = build_dataset()
    preds, hist = train_folds(ds, a.minutes, a.reuse)
    res = evaluate(ds, preds)
    res["fold_training"] = {g: h[-1] for g, h in hist.items()}
    res["minutes"] = (time.time() - t0) / 60
    (OUT / "screen_results.json").write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res["summary"], indent=1, default=float))
    print(f"wrote {OUT / 'screen_results.json'}")


if __name__ == "__main__":
    main()
