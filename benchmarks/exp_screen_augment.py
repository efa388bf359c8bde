"""Cross-domain augmentation experiment for cell-screen (nomitos training set, MITOS never seen).

.venv/bin/python benchmarks/exp_screen_augment.py JOB [JOB ...]   JOB = variant:seed, e.g. base:1 strong:1
Results appended to benchmarks/data/screen_xdomain/results.jsonl, probs to .../probs_<variant>_s<seed>.npz
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import eval_screen as ES

from napari_mitosis.training import train_screen as TS
from napari_mitosis.models.screen_net import CLASSES, PATCH

OUTD = ROOT / "benchmarks" / "data" / "screen_xdomain"
OUTD.mkdir(parents=True, exist_ok=True)
ED = ES.ED

# ------------------------------------------------------------------ augmentation variants
VARIANTS = {
    "base": dict(orig=True),
    "strong": dict(stain=0.4, stain_shift=0.08, hue=0.04, sat=0.3, gamma=0.25, norm=False),
    "strongnorm": dict(stain=0.4, stain_shift=0.08, hue=0.04, sat=0.3, gamma=0.25, norm=True),
    # variant 4 = the better of strong / strongnorm + wide scale + jpeg-like blur/noise
    "strong_scale": dict(stain=0.4, stain_shift=0.08, hue=0.04, sat=0.3, gamma=0.25, norm=False,
                         scale=(0.7, 1.4), degrade=True),
    "strongnorm_scale": dict(stain=0.4, stain_shift=0.08, hue=0.04, sat=0.3, gamma=0.25, norm=True,
                             scale=(0.7, 1.4), degrade=True),
}


def standardise(y):
    """Per-patch per-channel colour standardisation, computable at inference from the 32 px patch alone:
    (y - mean_c) / (std_c + 8) * 48 + 128 (kept in a 0-255-like range for the net's internal scaling)."""
    m = y.mean((2, 3), keepdim=True)
    s = y.std((2, 3), keepdim=True)
    return ((y - m) / (s + 8.0) * 48.0 + 128.0).contiguous(memory_format=torch.channels_last)


def _yiq():
    A = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    return A, torch.linalg.inv(A)


def augment_x(x, gen, size=PATCH, train=True, stain=0.4, stain_shift=0.08, hue=0.04, sat=0.3, gamma=0.25,
              norm=False, scale=(0.85, 1.15), degrade=False, shift_px=1.5):
    if not train:
        y = TS.augment(x, None, size, train=False)
        return standardise(y) if norm else y
    n = x.shape[0]
    # geometry only from the shipped augment (same flips/rotations/scale/shift code)
    y = TS.augment(x, gen, size, train=True, scale=scale, shift_px=shift_px, photometric=False).contiguous()
    # HED stain jitter, stronger
    minv, m = TS._hed_matrices()
    od = -torch.log((y + 1.0) / 256.0)
    conc = torch.einsum("nchw,cd->ndhw", od, minv)
    al = 1 + (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * stain
    be = (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * stain_shift
    al[:, 2], be[:, 2] = 1.0, 0.0
    conc = conc * al + be * (conc.sum(1, keepdim=True) > 0.05)
    y = (256.0 * torch.exp(-torch.einsum("ndhw,dc->nchw", conc, m)) - 1.0).clamp(0, 255)
    # hue rotation (in YIQ chroma plane, +-hue of a full turn) and saturation (x in [1-sat, 1+sat])
    A, Ai = _yiq()
    th = (torch.rand(n, generator=gen) * 2 - 1) * hue * 2 * math.pi
    sf = 1 + (torch.rand(n, generator=gen) * 2 - 1) * sat
    R = torch.zeros(n, 3, 3)
    R[:, 0, 0] = 1
    R[:, 1, 1], R[:, 1, 2] = torch.cos(th) * sf, -torch.sin(th) * sf
    R[:, 2, 1], R[:, 2, 2] = torch.sin(th) * sf, torch.cos(th) * sf
    Mx = Ai[None] @ R @ A[None]  # (n,3,3) rgb->rgb
    y = torch.einsum("nij,njhw->nihw", Mx, y).clamp(0, 255)
    # per-channel gamma, log-uniform in [exp(-gamma), exp(gamma)]
    g = torch.exp((torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * gamma)
    y = 255.0 * (y / 255.0).clamp_min(1e-4) ** g
    # brightness / contrast (as shipped)
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.15
    b = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 12
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * c + mean + b
    # blur: mild on a third (as shipped); with degrade: on half, sigma 0.4-1.2
    pb, smax = (0.5, 0.8) if degrade else (0.33, 0.5)
    blur = torch.rand(n, generator=gen) < pb
    if blur.any():
        sig = 0.4 + smax * torch.rand(1, generator=gen).item()
        kk = torch.exp(-0.5 * (torch.arange(-2, 3).float() / sig) ** 2)
        kk = kk / kk.sum()
        ker = (kk[:, None] * kk[None, :]).expand(3, 1, 5, 5).contiguous()
        y[blur] = F.conv2d(F.pad(y[blur], (2, 2, 2, 2), mode="replicate"), ker, groups=3)
    if degrade:
        # JPEG-like: 8x8 block mean mixing on a quarter (blockiness), gaussian noise sd 0-6 on half
        jb = torch.rand(n, generator=gen) < 0.25
        if jb.any():
            yb = y[jb]
            bm = F.interpolate(F.avg_pool2d(yb, 4), scale_factor=4, mode="nearest")
            w = 0.2 + 0.3 * torch.rand(int(jb.sum()), 1, 1, 1, generator=gen)
            y[jb] = (1 - w) * yb + w * bm
        nz = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float() * torch.rand(n, 1, 1, 1, generator=gen) * 6
        y = y + torch.randn(y.shape, generator=gen) * nz
    y = y.clamp(0, 255)
    return standardise(y) if norm else y.contiguous(memory_format=torch.channels_last)


def _augment_for(cfg):
    """The variant's augmentation, with train_screen.augment's signature."""
    if cfg.get("orig"):
        return None  # train_screen's own

    def aug(x, gen, size=PATCH, train=True):
        return augment_x(x, gen, size, train, **cfg)

    return aug


def train_x(patches, table, cfg, minutes=4.0, seed=1, log=print):
    """train_screen.train_screen (the shipped recipe) with the variant's augmentation."""
    return TS.train_screen(patches, table, minutes=minutes, seed=seed, log=log, augment_fn=_augment_for(cfg))


def predict_x(net, patches, cfg, batch=512):
    return TS.predict_patches(net, patches, batch=batch, augment_fn=_augment_for(cfg))


# ------------------------------------------------------------------ evaluation
class Ctx:
    def __init__(self, ds):
        import pandas as pd
        self.t = ES.join_gstn(ds["table"])
        t = self.t
        self.mmask = (t.dataset == "mitos").to_numpy()
        self.emask = t.group.isin(ED.EOE_TEST_GROUPS).to_numpy()
        mi = t[self.mmask].copy()
        self.mi = mi
        self.pos = (mi.label == "mitotic_figure").to_numpy()
        self.look = (mi.status == "hard_negative").to_numpy()
        self.oth = (mi.label == "other").to_numpy()
        pts = pd.read_csv(ED.DATA / "mitosis/mitos_atypia14/points.csv")
        self.truth = {f: g[g.label == "mitosis"][["x", "y"]].to_numpy(float) for f, g in pts.groupby("frame")}
        frames = sorted(mi.image.unique())
        grp = dict(zip(mi.image, mi.group, strict=False))
        self.folds = {g: ([f for f in frames if grp[f] != g], [f for f in frames if grp[f] == g]) for g in ES.GROUPS}
        eo = t[self.emask].copy()
        self.eo = eo
        eoe_pts = pd.read_csv(ED.DATA / "granulocytes/eoe_eosinophils/points.csv")
        self.etruth = {tl: g[g["class"].isin(["Eos", "Papilla Eos"])][["x", "y"]].to_numpy(float)
                       for tl, g in eoe_pts.groupby("tile")}
        tiles = sorted(eo.image.unique())
        block = {tl: eo.group[eo.image == tl].iloc[0].split("/")[1] for tl in tiles}
        blocks = sorted(set(block.values()))
        bf = [blocks[0::2], blocks[1::2]]
        self.efolds = {f"blocks{k}": ([tl for tl in tiles if block[tl] not in bf[k]], [tl for tl in tiles if block[tl] in bf[k]])
                       for k in range(2)}
        self.gpos = (eo.label == "granulocyte").to_numpy()
        self.goth = (eo.label == "other").to_numpy()

    def evaluate(self, probs):
        mi, eo = self.mi, self.eo
        s = probs[self.mmask, 0]
        g = mi.g_mit.to_numpy()
        r = {"auc_vs_lookalike": ES.auc(s[self.pos], s[self.look]), "auc_vs_all_other": ES.auc(s[self.pos], s[self.oth])}
        sk = probs[self.mmask, :2].max(1)
        r["keep_at_0.1"] = {"pos_kept": float((sk[self.pos] >= 0.1).mean()), "rejected": float((sk < 0.1).mean())}
        d = ES.detection_f1(mi, {"screen_alone": (s, "cand"), "product": (np.sqrt(s * g), "gstn")},
                            "mitotic_figure", ED.MITOS_MPP, self.truth, self.folds)
        r["f1_product"] = d["product"]["pooled"]["f1"]
        r["f1_screen_alone"] = d["screen_alone"]["pooled"]["f1"]
        r["mitos_detection"] = {k: v["pooled"] for k, v in d.items()}
        pe = probs[self.emask]
        sg = pe[:, 1]
        r["eoe_auc"] = ES.auc(sg[self.gpos], sg[self.goth])
        de = ES.detection_f1(eo, {"screen_alone": (sg, "cand"), "product": (np.sqrt(sg * eo.g_gran.to_numpy()), "gstn")},
                             "granulocyte", ED.EOE_MPP, self.etruth, self.efolds)
        r["eoe_f1_product"] = de["product"]["pooled"]["f1"]
        r["eoe_f1_screen_alone"] = de["screen_alone"]["pooled"]["f1"]
        return r


def main(jobs):
    t0 = time.time()
    ds = TS.build_dataset()
    tb, P = ds["table"], ds["patches"]
    print(f"loaded {len(tb)} candidates in {time.time() - t0:.0f} s", flush=True)
    ctx = Ctx(ds)
    out = (tb.dataset == "mitos").to_numpy()
    eoe_test = tb.group.isin(ED.EOE_TEST_GROUPS).to_numpy()
    train = tb.label.isin(CLASSES).to_numpy() & ~out & ~eoe_test
    score = out | eoe_test
    print(f"nomitos training set: {train.sum()} candidates (eval_screen's nomitos fold)", flush=True)
    resf = OUTD / "results.jsonl"
    for job in jobs:
        if job == "cached":
            t1 = time.time()
            probs = np.load(ROOT / "benchmarks/data/screen/fold_nomitos.npz")["probs"]
            r = ctx.evaluate(probs)
            r.update(variant="cached_fold_nomitos", seed=1, eval_seconds=round(time.time() - t1, 1))
        else:
            if job.startswith("auto4"):  # variant 4 on top of the better of strong / strongnorm (seed 1)
                rows = [json.loads(l) for l in resf.read_text().splitlines()]
                sc = {x["variant"]: x["auc_vs_lookalike"] + x["auc_vs_all_other"] for x in rows
                      if x["variant"] in ("strong", "strongnorm") and x["seed"] == 1}
                best = max(sc, key=sc.get)
                job = f"{best}_scale:" + job.split(":")[1]
                print(f"auto4 -> {job} ({sc})", flush=True)
            v, seed = job.split(":")
            seed = int(seed)
            cfg = VARIANTS[v]
            print(f"== {v} seed {seed}: {cfg}", flush=True)
            net, hist = train_x(P[train], tb[train].reset_index(drop=True), cfg, minutes=4.0, seed=seed,
                                log=lambda m: print(m, flush=True))
            probs = np.full((len(tb), 3), np.nan, np.float32)
            probs[score] = predict_x(net, P[score], cfg)
            np.savez(OUTD / f"probs_{v}_s{seed}.npz", probs=probs, hist=json.dumps(hist))
            torch.save(net.state_dict(), OUTD / f"net_{v}_s{seed}.pt")
            t1 = time.time()
            r = ctx.evaluate(probs)
            r.update(variant=v, seed=seed, cfg=cfg, steps=hist[-1]["step"], final_loss=hist[-1]["loss"],
                     train_seconds=hist[-1]["seconds"], eval_seconds=round(time.time() - t1, 1))
        with open(resf, "a") as f:
            f.write(json.dumps(r, default=float) + "\n")
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
               if k not in ("mitos_detection", "cfg")}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
