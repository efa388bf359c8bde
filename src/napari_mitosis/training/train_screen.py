"""Data and training of ``cell-screen``, the learned first pass of whole-slide detection.

Candidate data set (:func:`build_dataset`)
    Every labelled real image of ``../shared/data`` is resampled to the screening
    resolution (0.5 um/px) exactly as ``pipeline.detect.tile_candidates`` does it
    (``read_working`` on a one-level Slide, a 16 um white halo), its hematoxylin
    blobs are found by ``screen_features`` and kept when they pass ``screen`` at
    the loose thresholds :data:`LOOSE` (those of ``benchmarks/eval_detection.py``);
    candidates closer than 3 um are merged as in ``detect_tile``. Each candidate
    is labelled ``mitotic_figure`` within :data:`POS_UM` of a mitosis point
    (AMi-Br: of the crop centre), ``granulocyte`` within :data:`POS_UM` of an
    eosinophil (``Eos``, ``Papilla Eos``), ``other`` when farther than
    :data:`NEG_UM` from every positive, and is ignored in between. MITOS-ATYPIA-14
    look-alikes (``not_mitosis``) within :data:`POS_UM` of a candidate make it an
    ``other`` with status ``hard_negative``; EoE ``RBC Cluster`` points make
    ``other`` with status ``rbc``. A ``S x S`` (:data:`STORE`) patch of the
    screening image around every candidate is cached with the table under
    ``benchmarks/data/screen/`` (``candidates.npz``).

Training (:func:`train_screen`)
    Class-balanced batches (hard negatives up-weighted inside ``other``), random
    flips / 90 degree rotations, scale 0.85-1.15 and 1.5 px shifts (one
    ``grid_sample`` per batch), HED stain jitter, brightness / contrast, mild
    blur; Adam with cosine decay, cross-entropy with label smoothing.

    python -m napari_mitosis.training.train_screen build     # the candidate data set (~5 min)
    python -m napari_mitosis.training.train_screen train --minutes 5 --ship
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..models.screen_net import CLASSES, PATCH, SCREEN_MPP, build_screen_net, patches_at

#: loose screening of benchmarks/eval_detection.py (every candidate a cascade may see)
LOOSE = {"detect_screen_dark": 1.0, "detect_screen_gran_dark": 0.7, "detect_screen_eosin": 0.8}
POS_UM, NEG_UM = 4.0, 8.0
STORE = 44  # stored patch side (px at 0.5 um/px): room for scale 1.15 and shifts around a 32 px input
HALO_UM = 16.0
MITOS_MPP = 0.2455 * 1.5
EOE_MPP = 0.5
ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_CACHE = ROOT / "benchmarks" / "data" / "screen"


# ----------------------------------------------------------------- candidates of an image
def screening_image(img: np.ndarray, mpp: float) -> tuple[np.ndarray, float, int]:
    """The image at the screening resolution with a white halo, as detect reads a tile covering it.

    Returns ``(rgb, ds, halo)``: image pixel ``x`` is screening pixel ``(x + 0.5) / ds - 0.5 + halo``.
    """
    import dask.array as da

    from ..io.slide import Slide
    from ..io.working import read_working

    slide = Slide(path=Path("image"), levels=[da.from_array(img, chunks=(1024, 1024, 3))], mpp=mpp, format="image")
    m = max(SCREEN_MPP, mpp)
    ds = m / mpp
    halo = math.ceil(HALO_UM / m)
    h, w = img.shape[:2]
    W, H = math.ceil(w / ds), math.ceil(h / ds)
    return read_working(slide, -halo * ds, -halo * ds, ds, W + 2 * halo, H + 2 * halo), ds, halo


def to_screen(x, ds, halo):
    return (np.asarray(x, float) + 0.5) / ds - 0.5 + halo


def candidates(img: np.ndarray, mpp: float, thresholds: dict = LOOSE) -> tuple[pd.DataFrame, np.ndarray]:
    """Screened candidates of a whole image as ``detect_tile`` finds them (image px ``x, y``;
    screening px ``sx, sy``; ``dark``, ``eosin``) and the screening image."""
    from ..core.decision import DEFAULT_THRESHOLDS
    from ..core.screening import nms, screen, screen_features

    rgb, ds, halo = screening_image(img, mpp)
    m = ds * mpp
    f = screen_features(rgb, m, DEFAULT_THRESHOLDS["detect_nucleus_od"])
    f["sx"], f["sy"] = f["x"].to_numpy(), f["y"].to_numpy()
    f["x"] = (f["sx"] - halo + 0.5) * ds - 0.5
    f["y"] = (f["sy"] - halo + 0.5) * ds - 0.5
    h, w = img.shape[:2]
    own = (f.x >= -0.5) & (f.x < w - 0.5) & (f.y >= -0.5) & (f.y < h - 0.5)
    f = f[own.to_numpy()]
    f = f[screen(f, thresholds["detect_screen_dark"], thresholds["detect_screen_gran_dark"],
                 thresholds["detect_screen_eosin"])].reset_index(drop=True)
    if len(f) > 1:
        keep = nms(f[["x", "y"]].to_numpy(), f["dark"].to_numpy(), DEFAULT_THRESHOLDS["detect_nms_um"] / mpp / 2)
        f = f.iloc[keep].reset_index(drop=True)
    return f, rgb


def _dist(xy: np.ndarray, pts: np.ndarray) -> np.ndarray:
    if len(pts) == 0 or len(xy) == 0:
        return np.full(len(xy), np.inf)
    from scipy.spatial import cKDTree

    return cKDTree(pts).query(xy)[0]


def label_candidates(xy: np.ndarray, mpp: float, mitoses=(), granulocytes=(), lookalikes=(), rbc=()) -> tuple:
    """``(label, status)`` arrays: class name or '' (ignored), and confirmed / hard_negative / rbc / auto."""
    d_m = _dist(xy, np.asarray(mitoses, float).reshape(-1, 2)) * mpp
    d_g = _dist(xy, np.asarray(granulocytes, float).reshape(-1, 2)) * mpp
    d_l = _dist(xy, np.asarray(lookalikes, float).reshape(-1, 2)) * mpp
    d_r = _dist(xy, np.asarray(rbc, float).reshape(-1, 2)) * mpp
    label = np.full(len(xy), "", object)
    status = np.full(len(xy), "auto", object)
    near_pos = np.minimum(d_m, d_g)
    label[near_pos > NEG_UM] = "other"
    label[d_g <= POS_UM] = "granulocyte"
    label[d_m <= POS_UM] = "mitotic_figure"
    status[label != "other"] = "confirmed"
    hard = (label == "other") & (d_l <= POS_UM)
    status[hard] = "hard_negative"
    status[(label == "other") & (d_r <= POS_UM) & ~hard] = "rbc"
    # a look-alike that is not near a mitosis but 4-8 um from one: still ignored (ambiguous)
    status[label == ""] = "ignored"
    return label, status


def _jobs(data: Path):
    """(dataset, source, group, image name, path, mpp, points dict) for every labelled image."""
    from .cell_data import midog_scanner

    jobs = []
    mit = data / "mitosis" / "mitos_atypia14"
    if mit.exists():
        pts = pd.read_csv(mit / "points.csv")
        for frame, df in pts.groupby("frame"):
            jobs.append(("mitos", "mitos14", "mitos14/" + Path(frame).stem[:6], frame, mit / frame, MITOS_MPP,
                         {"mitoses": df[df.label == "mitosis"][["x", "y"]].to_numpy(float),
                          "lookalikes": df[df.label == "not_mitosis"][["x", "y"]].to_numpy(float)}))
    eoe = data / "granulocytes" / "eoe_eosinophils"
    if eoe.exists():
        pts = pd.read_csv(eoe / "points.csv")
        for t in sorted((eoe / "tiles").glob("*.jpg")):
            rel = "tiles/" + t.name
            mm = re.search(r"x(\d+)_y(\d+)", t.name)
            g = f"eoe/{int(mm.group(1)) // 1344}_{int(mm.group(2)) // 1344}"
            p = pts[pts.tile == rel]
            jobs.append(("eoe", "eoe", g, rel, t, EOE_MPP,
                         {"granulocytes": p[p["class"].isin(["Eos", "Papilla Eos"])][["x", "y"]].to_numpy(float),
                          "rbc": p[p["class"] == "RBC Cluster"][["x", "y"]].to_numpy(float)}))
    amibr = data / "mitosis" / "amibr_midog21"
    if amibr.exists():
        lab = pd.read_csv(amibr / "labels.csv")
        for r in lab.itertuples():
            jobs.append(("amibr", "amibr_" + midog_scanner(r.slide), "amibr/" + r.slide, r.file, amibr / r.file, 0.25,
                         {"mitoses": np.array([[63.5, 63.5]])}))
    nuc = data / "nuclei"
    sets = {"monuseg": ("monuseg_train", lambda s: 0.25),
            "miccai15": ("miccai15", lambda s: 0.5 if int(re.sub(r"\D", "", s) or 0) <= 7 else 0.25),
            "gbm40": ("gbm40", lambda s: 0.5)}
    for src, (folder, mpp_of) in sets.items():
        for img in sorted((nuc / folder / "images").glob("*")) if (nuc / folder).exists() else []:
            jobs.append(("nuclei", src, f"{src}/{img.stem}", f"{folder}/images/{img.name}", img, mpp_of(img.stem), {}))
    return jobs


def build_dataset(data=DEFAULT_DATA, cache=DEFAULT_CACHE, store: int = STORE, log=print) -> dict:
    """Candidates of every labelled image with labels and stored patches; cached as ``candidates.npz``."""
    from .cell_data import read_rgb

    data, cache = Path(data), Path(cache)
    out = cache / "candidates.npz"
    if out.exists():
        return load_dataset(out)
    cache.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(data)
    if not jobs:
        raise FileNotFoundError(f"{data}: no labelled image found (see ../shared/data/README.md)")
    tables, patches = [], []
    t0 = time.time()
    for k, (dataset, source, group, name, path, mpp, pts) in enumerate(jobs):
        img = read_rgb(path)
        f, rgb = candidates(img, mpp)
        if len(f) == 0:
            continue
        label, status = label_candidates(f[["x", "y"]].to_numpy(), mpp, **pts)
        f = f.assign(label=label, status=status, dataset=dataset, source=source, group=group, image=name, mpp=mpp)
        patches.append(patches_at(rgb, f.sx.to_numpy(), f.sy.to_numpy(), store))
        tables.append(f)
        if k % 200 == 0:
            log(f"{k + 1}/{len(jobs)} images, {sum(len(t) for t in tables)} candidates, {time.time() - t0:.0f} s")
    table = pd.concat(tables, ignore_index=True)
    arr = np.concatenate(patches)
    np.savez(out, patches=arr, table=table.to_json(orient="split"))
    log(f"{len(table)} candidates of {len(jobs)} images in {time.time() - t0:.0f} s -> {out}")
    return {"patches": arr, "table": table}


def load_dataset(path) -> dict:
    z = np.load(path, allow_pickle=False)
    from io import StringIO

    table = pd.read_json(StringIO(str(z["table"])), orient="split")
    for c in ("label", "status", "dataset", "source", "group", "image"):
        table[c] = table[c].fillna("").astype(str)
    return {"patches": z["patches"], "table": table}


# ----------------------------------------------------------------------- augmentation
def _hed_matrices():
    import torch

    from ..core.stain import HED_MATRIX, HED_MATRIX_INV

    return torch.tensor(HED_MATRIX_INV, dtype=torch.float32), torch.tensor(HED_MATRIX, dtype=torch.float32)


def augment(x, gen, size: int = PATCH, train: bool = True, stain: float = 0.2, scale=(0.85, 1.15),
            shift_px: float = 1.5, photometric: bool = True):
    """A batch of stored patches ``(n, S, S, 3)`` uint8 tensor -> ``(n, 3, size, size)`` float inputs.

    Without ``train`` the centre ``size`` crop (no change of values)."""
    import torch
    import torch.nn.functional as F

    n, S = x.shape[0], x.shape[1]
    x = x.permute(0, 3, 1, 2).float()
    if not train:
        o = S // 2 - size // 2
        return x[:, :, o : o + size, o : o + size].contiguous(memory_format=torch.channels_last)
    # geometry: the stored patch's pixel centre S//2 is the candidate; output pixel size//2 lands on it
    s = torch.empty(n).uniform_(*scale, generator=gen)  # >1: zoom out (cells look smaller)
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    ang = k.float() * (math.pi / 2)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # output px offsets u (from the output centre) -> input offsets s * R * F * u
    a = torch.zeros(n, 2, 3)
    a[:, 0, 0], a[:, 0, 1] = s * cos * flip, -s * sin
    a[:, 1, 0], a[:, 1, 1] = s * sin * flip, s * cos
    sh = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift_px
    # normalized coords (align_corners=False): input coord = (px + 0.5) / S * 2 - 1
    cin = (S // 2 + 0.5) / S * 2 - 1
    cout = (size // 2 + 0.5) / size * 2 - 1
    a[:, :, :2] *= size / S
    a[:, :, 2] = cin + sh * 2 / S - (a[:, :, :2] @ torch.tensor([cout, cout]))
    grid = F.affine_grid(a, (n, 3, size, size), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if not photometric:
        return y.contiguous(memory_format=torch.channels_last)
    # HED stain jitter (Tellez et al. 2018), per image
    minv, m = _hed_matrices()
    od = -torch.log((y + 1.0) / 256.0)  # (n, 3, h, w)
    conc = torch.einsum("nchw,cd->ndhw", od, minv)
    al = 1 + (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * stain
    be = (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * 0.04
    al[:, 2], be[:, 2] = 1.0, 0.0
    conc = conc * al + be * (conc.sum(1, keepdim=True) > 0.05)
    y = 256.0 * torch.exp(-torch.einsum("ndhw,dc->nchw", conc, m)) - 1.0
    # brightness / contrast
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.15
    b = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 12
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * c + mean + b
    # mild blur on a third of the images
    blur = torch.rand(n, generator=gen) < 0.33
    if blur.any():
        sig = 0.4 + 0.5 * torch.rand(1, generator=gen).item()
        g = torch.exp(-0.5 * (torch.arange(-1, 2).float() / sig) ** 2)
        g = (g / g.sum())
        ker = (g[:, None] * g[None, :]).expand(3, 1, 3, 3).contiguous()
        yb = F.conv2d(F.pad(y[blur], (1, 1, 1, 1), mode="replicate"), ker, groups=3)
        y[blur] = yb
    return y.clamp(0, 255).contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- training
def train_screen(patches: np.ndarray, table: pd.DataFrame, minutes: float = 5.0, batch: int = 128,
                 lr: float = 3e-3, widths=(8, 16, 32, 64), size: int = PATCH, hard_weight: float = 3.0,
                 class_share=(0.35, 0.25, 0.40), smoothing: float = 0.05, mitos_weight: float = 5.0, seed: int = 0, max_steps: int | None = None,
                 log=print, augment_fn=None):
    """Train a ScreenNet on labelled candidates (``table.label`` in CLASSES, rows aligned with ``patches``).

    Batches: ``class_share`` of each class (granulocyte share moved to the others
    when there is none); within ``other``, hard negatives (MITOS look-alikes) and
    RBC-cluster candidates drawn ``hard_weight`` times as often, within
    ``mitotic_figure`` the MITOS-frame mitoses ``mitos_weight`` times as often. Stops after
    ``minutes`` (or ``max_steps``). ``augment_fn(x, gen, size, train)``: another augmentation
    (default :func:`augment`; for experiments). Returns ``(net, history)``.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    lab = table["label"].to_numpy()
    idx = {c: np.flatnonzero(lab == c) for c in CLASSES}
    share = np.array([class_share[i] if len(idx[c]) else 0.0 for i, c in enumerate(CLASSES)])
    share = share / share.sum()
    status, dataset = table["status"].to_numpy(), table["dataset"].to_numpy() if "dataset" in table else None
    w = np.where(np.isin(status, ["hard_negative", "rbc"]), hard_weight, 1.0)
    if dataset is not None:  # the few in-domain (whole-frame) mitoses count more than the AMi-Br crops
        w = np.where((lab == "mitotic_figure") & (dataset == "mitos"), mitos_weight, w)
    wts = {c: (w[idx[c]] / w[idx[c]].sum()) if len(idx[c]) else None for c in CLASSES}
    data = torch.from_numpy(patches)
    net = build_screen_net(widths=widths, patch_size=size).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    t0, step, hist = time.time(), 0, []
    budget = minutes * 60
    est_steps = max_steps or 10**9
    run_loss = None
    net.train()
    while True:
        el = time.time() - t0
        if (max_steps and step >= max_steps) or (not max_steps and el >= budget):
            break
        frac = step / est_steps if max_steps else el / budget
        for g in opt.param_groups:
            g["lr"] = lr * (min(1.0, (step + 1) / 200)) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        counts = rng.multinomial(batch, share)
        sel = [rng.choice(idx[c], k, replace=True, p=wts[c]) if k else np.zeros(0, int)
               for c, k in zip(CLASSES, counts, strict=True)]
        b = np.concatenate(sel)
        y = torch.from_numpy(np.repeat(np.arange(3), counts))
        x = (augment_fn or augment)(data[torch.from_numpy(b)], gen, size, train=True)
        loss = F.cross_entropy(net(x), y, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss = loss.item() if run_loss is None else 0.98 * run_loss + 0.02 * loss.item()
        step += 1
        if step % 500 == 0:
            hist.append({"step": step, "loss": round(run_loss, 4), "seconds": round(time.time() - t0, 1)})
            log(f"step {step} loss {run_loss:.3f} {time.time() - t0:.0f} s")
    net.eval()
    hist.append({"step": step, "loss": round(run_loss or 0.0, 4), "seconds": round(time.time() - t0, 1)})
    return net, hist


def predict_patches(net, patches: np.ndarray, size: int = PATCH, batch: int = 512, augment_fn=None) -> np.ndarray:
    """Probabilities of stored patches (centre crop; ``augment_fn`` as in :func:`train_screen`)."""
    import torch

    out = []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(patches), batch):
            x = (augment_fn or augment)(torch.from_numpy(patches[i : i + batch]), None, size, train=False)
            out.append(torch.softmax(net(x), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def keep_threshold(scores: np.ndarray, positive: np.ndarray, keep: float = 0.98) -> float:
    """Largest threshold on ``scores`` that keeps at least ``keep`` of the positives."""
    s = np.sort(np.asarray(scores)[np.asarray(positive, bool)])
    if len(s) == 0:
        return 0.0
    k = math.floor((1 - keep) * len(s))  # may drop k positives
    return float(s[k]) if k < len(s) else float(s[-1])


# ------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(prog="train_screen", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="candidate data set -> benchmarks/data/screen/candidates.npz")
    t = sub.add_parser("train", help="train on every labelled candidate (the shipped model with --ship)")
    for p in (b, t):
        p.add_argument("--data", default=str(DEFAULT_DATA))
        p.add_argument("--cache", default=str(DEFAULT_CACHE))
    t.add_argument("--minutes", type=float, default=5.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--keep", type=float, default=None, help="cascade threshold (default: from screen_results.json)")
    t.add_argument("--ship", action="store_true", help="save as cell-screen in the package's weights folder")
    t.add_argument("--out", default=None, help="folder for the model files (default: the package's weights)")
    c = sub.add_parser("card", help="rewrite cell-screen's thresholds, metrics and card from benchmarks/screen_results.json")
    c.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "card":
        return update_card(a.out)
    import torch

    torch.set_num_threads(1)
    ds = build_dataset(a.data, a.cache)
    if a.cmd == "build":
        tb = ds["table"]
        print(tb.groupby(["dataset", "label"]).size().unstack(fill_value=0))
        return 0
    tb = ds["table"]
    use = tb["label"].isin(CLASSES).to_numpy()
    t0 = time.time()
    net, hist = train_screen(ds["patches"][use], tb[use].reset_index(drop=True), minutes=a.minutes, seed=a.seed)
    ship_model(net, hist, tb[use], a, time.time() - t0)
    return 0


def ship_model(net, hist, table, args, seconds):
    from ..models.registry import WEIGHTS_DIR, ModelSpec, save_model

    results_file = ROOT / "benchmarks" / "screen_results.json"
    res = json.loads(results_file.read_text()) if results_file.exists() else {}
    keep = args.keep if args.keep is not None else res.get("shipped_keep_threshold", {}).get("keep", 0.0)
    metrics = res.get("summary", {})
    counts = table.groupby(["dataset", "label"]).size().unstack(fill_value=0)
    spec = ModelSpec(
        name="cell-screen", task="screening", builder="napari_mitosis.models.screen_net:build_screen_net",
        config={"widths": [8, 16, 32, 64], "n_classes": 3, "patch_size": PATCH}, mpp=SCREEN_MPP, patch_size=PATCH,
        classes=list(CLASSES),
        thresholds=_thresholds(keep, res),
        metrics=metrics,
        training={"data": "../shared/data: MITOS-ATYPIA-14 (61 labelled frames, mpp 0.368), EoE tiles (all), AMi-Br crops, "
                          "MoNuSeg, MICCAI15, GBM40; loosely screened candidates (LOOSE) at 0.5 um/px",
                  "candidates": {d: {k: int(v) for k, v in r.items()} for d, r in counts.iterrows()},
                  "split": "shipped: trained on all candidates; keep threshold from leave-one-MITOS-frame-group-out "
                           "and EoE held-out test blocks (benchmarks/eval_screen.py)",
                  "steps": hist[-1]["step"], "minutes": round(seconds / 60, 2), "history": hist,
                  "command": f"python -m napari_mitosis.training.train_screen train --minutes {args.minutes} "
                             f"--seed {args.seed} --ship"})
    folder = Path(args.out) if args.out else WEIGHTS_DIR
    card = model_card(spec, res)
    save_model(net, spec, card, folder=folder)
    print(f"saved cell-screen to {folder}")


def _thresholds(keep, res) -> dict:
    k = res.get("shipped_keep_threshold", {})
    out = {"keep": float(keep)}  # on max(p_mitotic_figure, p_granulocyte)
    for name in ("keep_mitotic_figure", "keep_granulocyte", "keep_pooled_positives"):
        if name in k:
            out[name] = float(k[name])
    return out


def update_card(out=None):
    """Thresholds, metrics and card of the shipped cell-screen from ``benchmarks/screen_results.json``
    (weights unchanged)."""
    from dataclasses import replace

    from ..models.registry import WEIGHTS_DIR, load_model, save_model

    folder = Path(out) if out else WEIGHTS_DIR
    net, spec = load_model("cell-screen", "cpu", folder=folder)
    res = json.loads((ROOT / "benchmarks" / "screen_results.json").read_text())
    spec = replace(spec, thresholds=_thresholds(res["shipped_keep_threshold"]["keep"], res), metrics=res.get("summary", {}))
    save_model(net, spec, model_card(spec, res), folder=folder)
    print(f"cell-screen: keep = {spec.thresholds['keep']:.4f}")
    return 0


def _results_table(s: dict, res: dict) -> list:
    if not s:
        return ["(run benchmarks/eval_screen.py)"]
    f, e, c = s["mitos_f1"], s["eoe"], s["mitos_cascade_keep"]
    sw = s.get("screen_without_mitos", {})
    k = res.get("shipped_keep_threshold", {}).get("oof_effect", {})
    return [
        "| measure | cell-screen | cell-gstn-heldout |",
        "|---|---|---|",
        (f"| MITOS AUC mitosis vs look-alike candidates | {s['mitos_auc_mitosis_vs_lookalike']['screen']:.3f} "
        f"(trained without MITOS: {sw.get('auc_mitosis_vs_lookalike', float('nan')):.3f}) | "
        f"{s['mitos_auc_mitosis_vs_lookalike']['gstn_heldout']:.3f} |"),
        (f"| MITOS AUC mitosis vs all other candidates | {s['mitos_auc_mitosis_vs_all_other']['screen']:.3f} "
        f"(without MITOS: {sw.get('auc_mitosis_vs_all_other', float('nan')):.3f}) | "
        f"{s['mitos_auc_mitosis_vs_all_other']['gstn_heldout']:.3f} |"),
        f"| MITOS detection F1 (alone) | {f['screen_alone']:.3f} | {f['gstn_heldout']:.3f} |",
        f"| MITOS detection F1, sqrt(screen x GSTN) | {f['product_sqrt_screen_x_gstn']:.3f} | |",
        f"| MITOS detection F1, keep then GSTN | {f['cascade_keep_then_gstn']:.3f} | |",
        f"| EoE AUC granulocyte vs other | {e['auc_screen_granulocyte_vs_other']:.3f} | {e['auc_gstn_heldout_granulocyte_vs_other']:.3f} |",
        f"| EoE detection F1 (alone) | {e['f1_screen_alone']:.3f} | {e['f1_gstn_heldout']:.3f} |",
        f"| EoE detection F1, sqrt(screen x GSTN) | {e['f1_product_sqrt_screen_x_gstn']:.3f} | |",
        (f"| MITOS cascade, fold thresholds: positives kept / candidates rejected | {c['positives_kept']:.3f} / "
        f"{c['candidates_rejected']:.3f} | |"),
        (f"| EoE cascade, fold thresholds: positives kept / candidates rejected | {e['cascade_positives_kept']:.3f} / "
        f"{e['cascade_candidates_rejected']:.3f} | |"),
        "",
        (f"At the shipped `keep` = {s.get('keep_threshold', float('nan')):.4f} (out-of-fold scores): MITOS mitosis candidates "
        f"kept {k.get('mitos_positives_kept', float('nan')):.3f}, MITOS candidates rejected "
        f"{k.get('mitos_candidates_rejected', float('nan')):.3f} (of those passing the default screening: "
        f"{k.get('mitos_default_screened_rejected', float('nan')):.3f}); EoE granulocyte candidates kept "
        f"{k.get('eoe_positives_kept', float('nan')):.3f}, EoE candidates rejected {k.get('eoe_candidates_rejected', float('nan')):.3f}."),
        "",
        "The MITOS folds trained on three frame groups of the same slide (A03) as the test group; trained",
        "without any MITOS frame the screen is not clearly better than the GSTN (AUCs in brackets): most of",
        "the gain on MITOS comes from in-domain training data.",
    ]


def model_card(spec, res) -> str:
    s = res.get("summary", {})
    lines = [
        "# cell-screen",
        "",
        "A small CNN that scores whole-slide detection candidates on the screening image (0.5 um/px) before the",
        "GSTN runs: a cascade stage. Candidates with max(p_mitotic_figure, p_granulocyte) below",
        f"`thresholds.keep` = {spec.thresholds.get('keep'):.4f} need not be read at level 0 nor classified.",
        "",
        f"- Input: RGB patch {spec.patch_size} x {spec.patch_size} px at 0.5 um/px (16 um) centred on the candidate,",
        "  values 0-255 (scaled inside the network); `screen_probs(net, rgb, xs, ys)` cuts the patches.",
        "- Network: 4 x (3x3 conv + BN + ReLU), 8-16-32-64 channels, 2x2 max pooling between stages,",
        "  global mean + max pooling, linear to 3 classes (mitotic_figure, granulocyte, other).",
        "- Data: loosely screened candidates (`LOOSE` of benchmarks/eval_detection.py) of every labelled image of",
        "  ../shared/data (MITOS-ATYPIA-14 at 0.368 um/px, EoE eosinophil tiles, AMi-Br/MIDOG21 crops, MoNuSeg,",
        "  MICCAI15, GBM40; research use only, see ../shared/data/README.md for sources). Labels: within 4 um of a",
        "  mitosis / eosinophil point = that class; > 8 um from every positive = other; MITOS look-alikes are",
        "  hard negatives (up-weighted). Candidates per data set and label:",
        "",
        "```",
        json.dumps(spec.training.get("candidates", {}), indent=1),
        "```",
        "",
        f"- Training: {spec.training.get('command')}",
        "- Evaluation: `python benchmarks/eval_screen.py` (leave-one-MITOS-frame-group-out, EoE test blocks held",
        "  out); results in benchmarks/screen_results.json and docs/screen_net.md.",
        "",
        "## Held-out results (4 MITOS frame-group folds pooled; EoE test blocks)",
        "",
        *_results_table(s, res),
        "",
        "## Limits",
        "",
        "Granulocytes come from one eosinophilic-oesophagitis slide; mitoses from AMi-Br crops (only 32 um",
        "wide: candidates near their edge see white padding) and one MITOS-ATYPIA-14 slide. The keep threshold was chosen on",
        "out-of-fold scores of models trained without the scored groups; the shipped model saw all data and may",
        "be more confident than those, so it keeps at least as many candidates only approximately.",
        "Not a medical device.",
        "",
        *_detection_use(res),
    ]
    return "\n".join(lines)


def _detection_use(res: dict) -> list:
    """The card's section on how whole-slide detection uses the model, at the stored operating point."""
    thr = res.get("shipped_operating_point", {}).get("thresholds", {})
    tm, tg = thr.get("detect_mitotic_figure"), thr.get("detect_granulocyte")
    at = (f" With the shipped operating point (`cell-gstn.json`, `detect_mitotic_figure` {tm:g},"
          f" `detect_granulocyte` {tg:g}) that is `p_mitotic_figure >= {tm * tm:.4g}` or"
          f" `p_granulocyte >= {tg * tg:.4g}`.") if tm and tg else ""
    return ["## How whole-slide detection uses it", "",
            "`pipeline/detect.py` scores every screened blob with this model and scores each class by "
            "`sqrt(p_cell-screen * p_cell-gstn)`; cell-gstn runs only where the first-pass probability of some "
            "class reaches the square of that class's detection threshold (exact: below it no detection is "
            "possible)." + at + " `thresholds.keep` above (a 98 %-recall cut) is reported for the cascade "
            "evaluation and is not used by detection. `--first-pass none` turns the first pass off.", ""]


if __name__ == "__main__":
    raise SystemExit(main())
