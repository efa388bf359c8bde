"""Training and evaluation of the cell classifier (GSTN) and its CNN baseline.

Section 4.3 of Aubreville et al. (2017), as three stages on one network:

1. the classifier on centred crops (the ground-truth theta of a centred cell)
   with cross-entropy (equation 4);
2. the localizer on randomly offset crops with the loss of equation 8 against
   the ground-truth theta of equations 1-3;
3. the whole network, on offset crops seen through the localizer's own theta,
   with ``l_loc + kappa * l_cla`` (equation 9).

The baseline (section 4.4) trains on the same offset crops with cross-entropy.
Cross-validation folds hold whole slides / frame groups
(:func:`~napari_mitosis.training.cell_data.group_folds`); leave-one-source-out
runs train without one source and test on it. Everything is driven by
:func:`train_task`, a generator that yields :class:`~napari_mitosis.pipeline.Progress`
and returns a results dict; the weights, spec and model card are written with
:func:`~napari_mitosis.models.registry.save_model`.

Deviations from the paper, forced by a CPU budget of minutes rather than GPU
days, are recorded in the spec's ``training`` and the model card: training
length is set by a time budget instead of 50/200/100 epochs, the localizer
stage uses a learning rate of 1e-3 instead of 1e-4, batch normalisation is
used in all convolutions, and class balance comes from balanced sampling
(with replacement) rather than deleting cells of the larger classes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..pipeline.progress import Progress
from .cell_data import (
    CLASSES,
    CellDataError,
    CellSampler,
    group_folds,
    json_default,
    read_cells,
)
from ..models.gstn import GSTN, WORK_MPP, CiresanCNN, loc_loss, normalise, theta_to_xy

GSTN_NAME = "cell-gstn"
#: Steps of stages 1, 2, 3 relative to each other under a time budget.
STAGE_RATIO = (1.0, 2.0, 1.5)
BASELINE_NAME = "cell-cnn-baseline"


@dataclass
class TrainConfig:
    """Settings of ``napari-mitosis train classifier`` (see ``--help``)."""

    data: str = "../shared/data"
    out: str = "models-out"
    classes: list = field(default_factory=lambda: list(CLASSES))
    folds: int = 5
    run_folds: int = 1  # how many of the folds to train and test (fold 0 first; its models are shipped)
    loso: list = field(default_factory=list)  # sources to hold out, one run each
    minutes: float = 30.0  # the whole budget; step counts are derived from it
    steps: list = field(default_factory=list)  # fixed steps: [s] per stage, or [s1, s2, s3, baseline] (empty: budget)
    fold_ids: list = field(default_factory=list)  # which folds to run (default: 0 .. run_folds-1)
    batch: int = 32
    lr_cla: float = 1e-3
    lr_loc: float = 1e-3
    lr_joint: float = 3e-4
    lr_base: float = 1e-3
    kappa: float = 0.3
    baseline: bool = True
    eval_cap: int = 250  # at most this many test cells per (source, class, status)
    threads: int = 1
    seed: int = 0
    device: str = "cpu"
    command: str = ""


# ------------------------------------------------------------------ training
def _lr_at(step, total, base):
    """Cosine decay with a short warm-up."""
    warm = max(total // 20, 1)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


class _Clock:
    """Global step counter of a training run: turns steps into Progress and log lines."""

    def __init__(self, total=0, log=None):
        self.done, self.total, self.t0, self.log = 0, total, time.time(), log

    def tick(self, msg, every=True):
        self.done += 1
        if every:
            line = f"[{(time.time() - self.t0) / 60:5.1f} min] {msg}"
            if self.log is not None:
                print(line, file=self.log, flush=True)
            return Progress(min(self.done, self.total), max(self.total, self.done), msg)
        return None


def _stage(net, params, sampler, steps, lr, batch, loss_fn, offset, device, label, clock):
    """One training stage (Adam, cosine schedule); a generator yielding Progress, returning the final loss."""
    import torch

    opt = torch.optim.Adam(params, lr=lr)
    net.train()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        x, y, theta, _ = sampler.batch(batch, offset=offset)
        loss = loss_fn(net, x.to(device), y.to(device), theta.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        p = clock.tick(f"{label} {step + 1}/{steps} loss {np.mean(losses[-25:]):.4f}", step % 25 == 0 or step == steps - 1)
        if p is not None:
            yield p
    return float(np.mean(losses[-25:])) if losses else float("nan")


def _ce(net, x, y, theta):
    import torch.nn.functional as F

    return F.cross_entropy(net(x, theta)[0], y)


def _loc_only(net, x, y, theta):
    return loc_loss(net.localizer(normalise(x)), theta)


def _joint(kappa):
    def f(net, x, y, theta):
        import torch.nn.functional as F

        logits, theta_hat = net(x)
        return loc_loss(theta_hat, theta) + kappa * F.cross_entropy(logits, y)

    return f


def _base_ce(net, x, y, theta):
    import torch.nn.functional as F

    return F.cross_entropy(net(x)[0], y)


def train_gstn(sampler, cfg: TrainConfig, steps: tuple[int, int, int], clock=None):
    """The three stages of section 4.3 on a fresh :class:`GSTN` (a generator; returns (net, losses))."""
    import torch

    clock = clock or _Clock(sum(steps))
    torch.manual_seed(cfg.seed)
    net = GSTN(n_classes=len(cfg.classes)).to(cfg.device)
    s1, s2, s3 = steps
    losses = {}
    losses["stage1_ce"] = yield from _stage(net, net.classifier.parameters(), sampler, s1, cfg.lr_cla, cfg.batch, _ce,
                                            False, cfg.device, "stage 1 (classifier, centred crops)", clock)
    losses["stage2_loc"] = yield from _stage(net, net.localizer.parameters(), sampler, s2, cfg.lr_loc, cfg.batch,
                                             _loc_only, True, cfg.device, "stage 2 (localizer, offset crops)", clock)
    losses["stage3_joint"] = yield from _stage(net, net.parameters(), sampler, s3, cfg.lr_joint, cfg.batch,
                                               _joint(cfg.kappa), True, cfg.device, "stage 3 (joint)", clock)
    return net.eval(), losses


def train_baseline(sampler, cfg: TrainConfig, steps: int, clock=None):
    """The Ciresan-style baseline on offset crops with cross-entropy (a generator; returns (net, losses))."""
    import torch

    clock = clock or _Clock(steps)
    torch.manual_seed(cfg.seed)
    net = CiresanCNN(n_classes=len(cfg.classes)).to(cfg.device)
    loss = yield from _stage(net, net.parameters(), sampler, steps, cfg.lr_base, cfg.batch, _base_ce, True,
                             cfg.device, "baseline", clock)
    return net.eval(), {"baseline_ce": loss}


# ---------------------------------------------------------------- evaluation
def eval_rows(table: pd.DataFrame, cap: int, seed: int = 0) -> np.ndarray:
    """Test rows: all, but at most ``cap`` per (source, class, status), seeded."""
    rows = []
    for _, df in table.groupby(["source", "class", "status"]):
        idx = df.index.to_numpy()
        if cap and len(idx) > cap:
            idx = np.sort(np.random.default_rng(seed).choice(idx, cap, replace=False))
        rows.append(idx)
    return np.concatenate(rows) if rows else np.zeros(0, int)


def make_eval_set(sampler: CellSampler, rows, seed: int = 0, batch: int = 64):
    """Fixed test inputs: each cell once, randomly offset (seeded), no augmentation."""
    rng = np.random.default_rng(seed)
    xs, ys, ds = [], [], []
    for i in range(0, len(rows), batch):
        x, y, _, d = sampler.make(rows[i : i + batch], offset=True, augment=False, rng=rng)
        xs.append(x), ys.append(y), ds.append(d)
    import torch

    return torch.cat(xs), torch.cat(ys), np.concatenate(ds)


def predict(net, x, batch: int = 128, device="cpu"):
    """Probabilities (N, C) and the localised (x, y) in input pixels (NaN for the baseline)."""
    import torch

    probs, xy = [], []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits, theta = net(x[i : i + batch].to(device))
            probs.append(torch.softmax(logits, 1).cpu())
            if theta is None:
                xy.append(torch.full((len(logits), 2), float("nan")))
            else:
                px, py = theta_to_xy(theta.cpu())
                xy.append(torch.stack([px, py], 1))
    return torch.cat(probs).numpy(), torch.cat(xy).numpy()


def metrics(y, pred, classes) -> dict:
    """Per-class precision, recall, F1 and support, their support-weighted average, accuracy, confusion matrix."""
    y, pred = np.asarray(y), np.asarray(pred)
    n = len(classes)
    cm = np.zeros((n, n), int)
    for a, b in zip(y, pred):
        cm[a, b] += 1
    per = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        # no prediction of a class that exists: precision 0 (sklearn's zero_division=0); a class absent: NaN
        p = tp / cm[:, i].sum() if cm[:, i].sum() else (0.0 if cm[i].sum() else float("nan"))
        r = tp / cm[i].sum() if cm[i].sum() else float("nan")
        f = float("nan") if np.isnan(p) or np.isnan(r) else (2 * p * r / (p + r) if p + r else 0.0)
        per[c] = {"precision": p, "recall": r, "f1": f, "support": int(cm[i].sum())}
    sup = np.array([per[c]["support"] for c in classes], float)
    avg = {}
    for k in ("precision", "recall", "f1"):
        v = np.array([per[c][k] for c in classes], float)
        ok = ~np.isnan(v) & (sup > 0)
        avg[k] = float((v[ok] * sup[ok]).sum() / sup[ok].sum()) if ok.any() else float("nan")
    avg["support"] = int(sup.sum())
    per["avg / total"] = avg
    return {"per_class": per, "accuracy": float(np.trace(cm) / max(cm.sum(), 1)), "confusion": cm.tolist(), "n": int(cm.sum())}


def pick_threshold(probs, y, k: int) -> float:
    """The probability threshold of class ``k`` that maximises its one-vs-rest F1."""
    best, best_f = 0.5, -1.0
    for t in np.linspace(0.05, 0.95, 91):
        pos = probs[:, k] >= t
        tp = np.sum(pos & (y == k))
        f = 2 * tp / max(pos.sum() + np.sum(y == k), 1)
        if f > best_f:
            best, best_f = round(float(t), 3), f
    return best


def loc_error_um(xy_pred, deltas, mpp: float = WORK_MPP) -> np.ndarray:
    """Distance (um) between the localised centre and the true cell centre ``c - Delta``."""
    c = (128 - 1) / 2
    truth = c - np.asarray(deltas)
    return np.hypot(xy_pred[:, 0] - truth[:, 0], xy_pred[:, 1] - truth[:, 1]) * mpp


# -------------------------------------------------------------------- driver
def _budget_steps(cfg, n_gstn_runs, n_base_runs, sampler):
    """GSTN steps per stage and baseline steps that fit ``cfg.minutes`` (timed on a few steps here)."""
    import torch

    if cfg.steps:
        st = [int(v) for v in (cfg.steps if isinstance(cfg.steps, (list, tuple)) else [cfg.steps])]
        if len(st) == 4:
            return tuple(st[:3]), st[3], {}
        s = st[0]
        return (s, s, s), max(int(3 * s * 200 / 350), 1), {}
    net, base = GSTN(n_classes=len(cfg.classes)), CiresanCNN(n_classes=len(cfg.classes))
    opt = torch.optim.Adam(list(net.parameters()) + list(base.parameters()), lr=1e-5)

    def time_it(fn, n=3):
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    data = time_it(lambda: sampler.batch(cfg.batch))
    x, y, th, _ = sampler.batch(cfg.batch)

    def step(f, m):
        def run():
            loss = f(m, x, y, th)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    t1 = data + time_it(step(_ce, net))
    t2 = data + time_it(step(_loc_only, net))
    t3 = data + time_it(step(_joint(cfg.kappa), net))
    tb = data + time_it(step(_base_ce, base))
    evals = 60.0 * n_gstn_runs  # rendering and scoring the test sets
    avail = max(cfg.minutes * 60 * 0.92 - evals, 30.0)
    # steps s per stage; baseline gets 200/350 of the GSTN's total epochs (section 4.4)
    # the localizer (stage 2) is the hardest to learn and gets twice the steps of stage 1 (the paper: 50/200/100 epochs)
    ratio = STAGE_RATIO
    per_s = n_gstn_runs * (ratio[0] * t1 + ratio[1] * t2 + ratio[2] * t3) + n_base_runs * tb * sum(ratio) * 200 / 350
    s = max(avail / per_s, 2)
    steps = tuple(max(int(r * s), 2) for r in ratio)
    timing = {"sec_per_step": dict(stage1=t1, stage2=t2, stage3=t3, baseline=tb)}
    return steps, max(int(sum(steps) * 200 / 350), 2), timing


def train_task(cfg: TrainConfig, table: pd.DataFrame | None = None):
    """Run the cross-validation folds, the leave-one-source-out runs, and save the fold-0 models.

    Yields :class:`Progress`; returns a dict of results (also written to
    ``OUT/results.json``, with out-of-fold predictions in ``OUT/predictions.csv``).
    """
    import torch

    torch.set_num_threads(max(int(cfg.threads), 1))
    t_start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    yield Progress(0, 1, "reading the cell data")
    if table is None:
        table = read_cells(cfg.data)
    table = table[table["class"].isin(cfg.classes)].reset_index(drop=True)
    if table.empty:
        raise CellDataError(f"{cfg.data}: no cells of the classes {cfg.classes}")
    missing = [c for c in cfg.classes if c not in set(table["class"])]
    if missing:
        raise CellDataError(f"{cfg.data}: no cells of class(es) {missing}; every class needs examples")
    if not 1 <= cfg.run_folds <= cfg.folds:
        raise ValueError(f"run_folds must be 1..folds ({cfg.folds}), got {cfg.run_folds}")
    fold_ids = [int(k) for k in cfg.fold_ids] or list(range(cfg.run_folds))
    if any(not 0 <= k < cfg.folds for k in fold_ids):
        raise ValueError(f"fold ids must be 0..{cfg.folds - 1}, got {fold_ids}")
    unknown = [s for s in cfg.loso if s not in set(table["source"])]
    if unknown:
        raise ValueError(f"--loso: unknown source(s) {unknown}; sources: {sorted(set(table['source']))}")
    fold = group_folds(table, cfg.folds, cfg.seed)
    table = table.assign(fold=fold)
    counts = table.groupby(["source", "class"]).size().unstack(fill_value=0)

    probe = CellSampler(table, cfg.classes, seed=cfg.seed)
    n_runs = len(fold_ids) + len(cfg.loso)
    stage_steps, base_steps, timing = _budget_steps(cfg, n_runs, len(fold_ids) if cfg.baseline else 0, probe)
    total = n_runs * sum(stage_steps) + (len(fold_ids) * base_steps if cfg.baseline else 0)
    log = open(out / "train.log", "a")
    clock = _Clock(total, log)
    clock.t0 = t_start
    print(f"cells per source and class:\n{counts.to_string()}\nsteps of the GSTN stages {stage_steps}, "
          f"baseline {base_steps}; timing {timing}", file=log, flush=True)

    results = {"config": asdict(cfg), "counts": counts.to_dict(), "steps": {"gstn_stages": list(stage_steps), "baseline": base_steps},
               "timing": timing, "folds": [], "loso": []}
    oof = []
    shipped = {}
    for k in fold_ids:
        train_t, test_t = table[table.fold != k], table[table.fold == k]
        sampler = CellSampler(train_t, cfg.classes, seed=cfg.seed + k)
        yield Progress(clock.done, total, f"fold {k}: GSTN ({len(train_t)} train / {len(test_t)} test cells)")
        net, losses = yield from train_gstn(sampler, cfg, stage_steps, clock)
        res = {"fold": k, "train": len(train_t), "test": len(test_t), "losses": losses}
        tester = CellSampler(test_t.reset_index(drop=True), cfg.classes, seed=99)
        rows = eval_rows(tester.table, cfg.eval_cap, seed=k)
        x, y, deltas = make_eval_set(tester, rows, seed=1000 + k)
        t0 = time.perf_counter()
        p, xy = predict(net, x, device=cfg.device)
        speed = len(x) / (time.perf_counter() - t0)
        err = loc_error_um(xy, deltas)
        pred_rows = tester.table.loc[rows, ["image", "x", "y", "class", "status", "source", "group"]].reset_index(drop=True)
        pred_rows["fold"] = k
        for i, c in enumerate(cfg.classes):
            pred_rows[f"gstn_p_{c}"] = p[:, i]
        pred_rows["gstn_pred"] = [cfg.classes[i] for i in p.argmax(1)]
        pred_rows["loc_err_um"] = err
        pred_rows["dx"], pred_rows["dy"] = deltas[:, 0], deltas[:, 1]
        res["gstn"] = metrics(y.numpy(), p.argmax(1), cfg.classes)
        res["gstn"]["loc_err_um"] = {"mean": float(err.mean()), "median": float(np.median(err)), "p90": float(np.percentile(err, 90))}
        res["gstn"]["cells_per_s_cpu_eval"] = speed
        if k == 0:
            thr = {}
            if "mitotic_figure" in cfg.classes:
                thr["mitotic_figure"] = pick_threshold(p, y.numpy(), cfg.classes.index("mitotic_figure"))
            shipped["gstn"] = (net, thr, res["gstn"])
        if cfg.baseline:
            yield Progress(clock.done, total, f"fold {k}: baseline")
            base, bl = yield from train_baseline(sampler, cfg, base_steps, clock)
            res["losses"].update(bl)
            pb, _ = predict(base, x, device=cfg.device)
            for i, c in enumerate(cfg.classes):
                pred_rows[f"base_p_{c}"] = pb[:, i]
            pred_rows["base_pred"] = [cfg.classes[i] for i in pb.argmax(1)]
            res["baseline"] = metrics(y.numpy(), pb.argmax(1), cfg.classes)
            if k == 0:
                thr = {}
                if "mitotic_figure" in cfg.classes:
                    thr["mitotic_figure"] = pick_threshold(pb, y.numpy(), cfg.classes.index("mitotic_figure"))
                shipped["baseline"] = (base, thr, res["baseline"])
        oof.append(pred_rows)
        results["folds"].append(res)
        print(f"[{(time.time() - t_start) / 60:5.1f} min] fold {k}: GSTN acc {res['gstn']['accuracy']:.3f}"
              + (f", baseline acc {res['baseline']['accuracy']:.3f}" if cfg.baseline else ""), file=log, flush=True)
        _write(out, results, oof, cfg)
        if k == 0:
            _save(out, cfg, shipped, results, counts, sorted(test_t.group.unique()))

    for src in cfg.loso:
        train_t, test_t = table[table.source != src], table[table.source == src]
        train_t = train_t[train_t["class"].isin(cfg.classes)]
        if not set(cfg.classes) <= set(train_t["class"]):
            results["loso"].append({"source": src, "skipped": "a class exists only in this source"})
            continue
        sampler = CellSampler(train_t, cfg.classes, seed=cfg.seed + 77)
        yield Progress(clock.done, total, f"leave out {src}: GSTN")
        net, losses = yield from train_gstn(sampler, cfg, stage_steps, clock)
        tester = CellSampler(test_t.reset_index(drop=True), cfg.classes, seed=99)
        rows = eval_rows(tester.table, cfg.eval_cap, seed=5)
        x, y, deltas = make_eval_set(tester, rows, seed=2000)
        p, xy = predict(net, x, device=cfg.device)
        err = loc_error_um(xy, deltas)
        st = tester.table.loc[rows, "status"].to_numpy()
        res = {"source": src, "train": len(train_t), "test": len(rows), "losses": losses,
               "gstn": metrics(y.numpy(), p.argmax(1), cfg.classes),
               "loc_err_um": {"mean": float(err.mean()), "median": float(np.median(err))},
               "by_status": {s: metrics(y.numpy()[st == s], p.argmax(1)[st == s], cfg.classes)["accuracy"] for s in sorted(set(st))}}
        results["loso"].append(res)
        print(f"[{(time.time() - t_start) / 60:5.1f} min] leave out {src}: acc {res['gstn']['accuracy']:.3f}", file=log, flush=True)
        _write(out, results, oof, cfg)

    results["minutes"] = (time.time() - t_start) / 60
    _write(out, results, oof, cfg)
    log.close()
    yield Progress(total, total, "done")
    return results


def _write(out, results, oof, cfg):
    if oof:
        df = pd.concat(oof, ignore_index=True)
        df.to_csv(out / "predictions.csv", index=False)
        results["pooled"] = pooled(df, cfg.classes)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=json_default))


def pooled(df: pd.DataFrame, classes) -> dict:
    """Metrics of the concatenated out-of-fold predictions, overall and per source (as the paper pools its folds)."""
    res = {}
    y = df["class"].map(classes.index).to_numpy()
    for who in ("gstn", "base"):
        if f"{who}_pred" not in df:
            continue
        pred = df[f"{who}_pred"].map(classes.index).to_numpy()
        res[who] = metrics(y, pred, classes)
        res[who]["per_source"] = {
            s: {"n": int((df.source == s).sum()), "accuracy": float((pred[df.source == s] == y[df.source == s]).mean()),
                "by_class": {c: float((pred[(df.source == s) & (y == i)] == i).mean())
                             for i, c in enumerate(classes) if ((df.source == s) & (y == i)).any()}}
            for s in sorted(df.source.unique())
        }
        if who == "gstn":
            res[who]["loc_err_um"] = {"mean": float(df.loc_err_um.mean()), "median": float(df.loc_err_um.median()),
                                      "p90": float(df.loc_err_um.quantile(0.9)),
                                      "median_by_class": {c: float(df.loc_err_um[df["class"] == c].median())
                                                          for c in classes if (df["class"] == c).any()}}
            hn = df.status == "hard_negative"
            if hn.any():
                res[who]["hard_negative_accuracy"] = float((pred[hn] == y[hn]).mean())
    return res


def _card(name, title, cfg, m, thr, counts, command, extra=""):
    rows = "\n".join(
        f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for c, v in m["per_class"].items()
    )
    return f"""# {name}

{title}

- Input: RGB crop 128 x 128 px at {WORK_MPP} um/px (other pixel sizes are rescaled), cell anywhere inside.
- Output: probabilities of {", ".join(cfg.classes)}{extra}.
- Thresholds (chosen on the validation fold): {json.dumps(thr)}; otherwise the most probable class.
- Data: {cfg.data} (AMi-Br/MIDOG21, MITOS-ATYPIA-14, EoE eosinophils, MoNuSeg, MICCAI15, GBM40: research use only;
  see docs/classifier.md for sources and licences). Cells per source and class:

```
{counts.to_string()}
```

- Split: {cfg.folds}-fold cross-validation by slide / frame group; this model is fold 0's (tested on fold 0,
  trained on the other folds).
- Command: `{command}`

## Fold-0 test results (argmax, offset crops, no augmentation)

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Accuracy {m['accuracy']:.3f} on {m['n']} cells.

## Limits

Granulocytes come from a single eosinophilic-oesophagitis slide (one source): the network may partly
recognise that slide rather than the cell. Mitotic figures are mostly from the AMi-Br crops. See the
per-source and leave-one-source-out results in docs/classifier.md before trusting a score on a new
scanner or tissue. Not a medical device.
"""


def _save(out, cfg, shipped, results, counts, test_groups=()):
    from ..models.registry import ModelSpec, save_model

    command = results["config"].get("command", "napari-mitosis train classifier")
    training = {"data": cfg.data, "split": f"{cfg.folds}-fold by slide/frame group, fold 0 held out",
                "command": command, "steps": results["steps"],
                "deviations": ["time-budgeted steps instead of 50/200/100 epochs", "localizer lr 1e-3 (paper 1e-4)",
                               "batch normalisation", "balanced sampling with replacement instead of deleting cells",
                               f"kappa={cfg.kappa}"],
                "test_groups": list(test_groups)}
    weights = Path(out) / "weights"
    if "gstn" in shipped:
        net, thr, m = shipped["gstn"]
        spec = ModelSpec(name=GSTN_NAME, task="classification", builder="napari_mitosis.models.gstn:build_gstn",
                         config={"n_classes": len(cfg.classes), "loc_width": net.localizer.features[0][0].out_channels,
                                 "cls_width": net.classifier.features[0][0].out_channels},
                         mpp=WORK_MPP, patch_size=128, classes=list(cfg.classes),
                         thresholds=thr, metrics=_flat(m), training=training)
        save_model(net, spec, _card(GSTN_NAME, "Guided spatial transformer network (Aubreville et al. 2017): "
                                    "cell class and refined cell position.", cfg, m, thr, counts, command,
                                    "; the localizer's theta gives the cell's position"), folder=weights)
    if "baseline" in shipped:
        net, thr, m = shipped["baseline"]
        spec = ModelSpec(name=BASELINE_NAME, task="classification", builder="napari_mitosis.models.gstn:build_baseline",
                         config={"n_classes": len(cfg.classes), "width": net.features[0].out_channels}, mpp=WORK_MPP,
                         patch_size=128, classes=list(cfg.classes), thresholds=thr, metrics=_flat(m), training=training)
        save_model(net, spec, _card(BASELINE_NAME, "12-layer CNN after Ciresan et al. (2013), the paper's baseline "
                                    "(no localisation).", cfg, m, thr, counts, command), folder=weights)


def _flat(m):
    out = {"accuracy": m["accuracy"]}
    for c, v in m["per_class"].items():
        for k in ("precision", "recall", "f1"):
            out[f"{c}/{k}"] = v[k]
    if "loc_err_um" in m:
        out["loc_err_um_mean"] = m["loc_err_um"]["mean"]
    return out


# ------------------------------------------------------------------ reporting
def results_markdown(results: dict) -> str:
    """The tables of docs/classifier.md from a ``results.json`` (Table 1 style, per source, LOSO, confusion)."""
    classes = results["config"]["classes"]
    pooled_res = results.get("pooled", {})
    out = []

    def table1(m, title):
        out.append(f"**{title}** (n = {m['n']}, accuracy {m['accuracy']:.3f})\n")
        out.append("| class | precision | recall | F1 | support |\n|---|---|---|---|---|")
        for c, v in m["per_class"].items():
            b = "**" if c == "avg / total" else ""
            out.append(f"| {b}{c}{b} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
        out.append("")

    def confusion(m, title):
        out.append(f"{title} (rows: true class, columns: predicted)\n")
        out.append("| true \\ predicted | " + " | ".join(classes) + " |\n|---|" + "---|" * len(classes))
        for c, row in zip(classes, m["confusion"]):
            out.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
        out.append("")

    names = {"gstn": "GSTN (cell-gstn)", "base": "CNN baseline (cell-cnn-baseline)"}
    for who in ("base", "gstn"):
        if who in pooled_res:
            table1(pooled_res[who], names[who] + f", {len(results['folds'])} pooled test fold(s)")
    for who in ("gstn", "base"):
        if who in pooled_res:
            confusion(pooled_res[who], "Confusion matrix, " + names[who])
    if "gstn" in pooled_res and "loc_err_um" in pooled_res["gstn"]:
        e = pooled_res["gstn"]["loc_err_um"]
        out.append(f"Localisation error of the GSTN (distance from the localised to the annotated cell centre): "
                   f"mean {e['mean']:.2f} um, median {e['median']:.2f} um, 90th percentile {e['p90']:.2f} um; "
                   "median by class: " + ", ".join(f"{k} {v:.2f} um" for k, v in e.get("median_by_class", {}).items())
                   + ". Inputs are offset by up to 32 px = 8 um on each axis (0 to 11.3 um from the centre).\n")
    if pooled_res:
        out.append("Per source (pooled test folds): accuracy, and recall of each class the source has\n")
        out.append("| source | n | GSTN acc | baseline acc | GSTN recall per class | baseline recall per class |\n|---|---|---|---|---|---|")
        g, b = pooled_res.get("gstn", {}).get("per_source", {}), pooled_res.get("base", {}).get("per_source", {})
        for s in sorted(g):
            fmt = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.get("by_class", {}).items())
            out.append(f"| {s} | {g[s]['n']} | {g[s]['accuracy']:.3f} | {b.get(s, {}).get('accuracy', float('nan')):.3f} | "
                       f"{fmt(g[s])} | {fmt(b.get(s, {}))} |")
        out.append("")
    for r in results.get("loso", []):
        if "gstn" not in r:
            out.append(f"Leave out {r['source']}: skipped ({r.get('skipped')})\n")
            continue
        table1(r["gstn"], f"GSTN trained without {r['source']}, tested on all of it")
        confusion(r["gstn"], f"Confusion matrix, {r['source']} held out")
        out.append("Accuracy by label status: " + ", ".join(f"{k} {v:.3f}" for k, v in r["by_status"].items())
                   + f"; localisation error mean {r['loc_err_um']['mean']:.2f} um, median {r['loc_err_um']['median']:.2f} um.\n")
    return "\n".join(out)
