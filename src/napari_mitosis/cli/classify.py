"""Cell classifier sub-commands: classify, and ``train classifier``.

    napari-mitosis classify CROPS_FOLDER [--mpp UM] --out scores.csv
    napari-mitosis classify IMAGE --points points.csv [--mpp UM] --out scores.csv
    napari-mitosis train classifier --data ../shared/data --out DIR [--minutes 35] [--folds 5 --run-folds 3]
                                    [--loso mitos14 ...] [--classes mitotic_figure granulocyte other] [--ship]
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from . import train
from ._common import progress_bar


def cmd_classify(args) -> int:
    from ..pipeline import run
    from ..pipeline.classify import ClassifyError, classify_crops_task, classify_points_task, read_points

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out must be a .csv file, got {out.name!r}")
    src = Path(args.input)
    if not src.exists():
        raise ValueError(f"{src}: no such file or folder")
    bar = progress_bar("classifying")
    try:
        if args.points:
            if src.is_dir() and not src.suffix:
                raise ClassifyError(f"{src}: with --points, INPUT must be an image or slide, not a folder of crops")
            task = classify_points_task(src, read_points(args.points), mpp=args.mpp, model=args.model,
                                        device=args.device, batch=args.batch)
        else:
            if args.mpp is None:
                print("note: no --mpp given; assuming the crops are at 0.25 um/px (128 px = 32 um)", file=sys.stderr)
            task = classify_crops_task(src, mpp=args.mpp, model=args.model, device=args.device, batch=args.batch)
        df = run(task, bar)
    finally:
        bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..io.detections import atomic_write_text, safe_csv_text

    atomic_write_text(out, safe_csv_text(df, float_format="%.4f"))
    counts = df["class"].value_counts().to_dict()
    print(f"{len(df)} cells -> {out} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}; model {df.attrs.get('model')})")
    return 0


def cmd_train(args) -> int:
    from ..training.cell_data import CLASSES
    from ..models.registry import WEIGHTS_DIR
    from ..training.train_classifier import BASELINE_NAME, GSTN_NAME, TrainConfig, train_task
    from ..pipeline import run

    cfg = TrainConfig(
        data=args.data, out=args.out, classes=args.classes or list(CLASSES), folds=args.folds, run_folds=args.run_folds,
        loso=args.loso or [], minutes=args.minutes, steps=args.steps, fold_ids=args.fold_ids, batch=args.batch, kappa=args.kappa,
        baseline=not args.no_baseline, threads=args.threads, seed=args.seed, eval_cap=args.eval_cap,
        command="napari-mitosis train classifier " + " ".join(shlex.quote(a) for a in _argv_of(args)),
    )
    bar = progress_bar("training the cell classifier")
    try:
        results = run(train_task(cfg), bar)
    finally:
        bar.close()
    pooled = results.get("pooled", {})
    for who in ("gstn", "base"):
        if who in pooled:
            print(f"{who}: accuracy {pooled[who]['accuracy']:.3f} (pooled over {len(results['folds'])} fold(s))")
    for r in results.get("loso", []):
        if "gstn" in r:
            print(f"leave out {r['source']}: accuracy {r['gstn']['accuracy']:.3f}")
    weights = Path(cfg.out) / "weights"
    print(f"results: {Path(cfg.out) / 'results.json'}; weights: {weights}")
    if args.ship:
        for name in (GSTN_NAME, BASELINE_NAME):
            for ext in (".pt", ".json", ".md"):
                f = weights / f"{name}{ext}"
                if f.exists():
                    shutil.copy2(f, WEIGHTS_DIR / f.name)
        print(f"shipped to {WEIGHTS_DIR}")
    return 0


def _argv_of(args):
    out = ["--data", str(args.data), "--out", str(args.out), "--minutes", f"{args.minutes:g}",
           "--folds", str(args.folds), "--run-folds", str(args.run_folds)]
    if args.fold_ids:
        out += ["--fold-ids", *map(str, args.fold_ids)]
    if args.steps:
        out += ["--steps", *map(str, args.steps)]
    if args.loso:
        out += ["--loso", *args.loso]
    if args.classes:
        out += ["--classes", *args.classes]
    if args.kappa != 0.3:
        out += ["--kappa", f"{args.kappa:g}"]
    if args.no_baseline:
        out += ["--no-baseline"]
    if args.ship:
        out += ["--ship"]
    return out


def _clear_errors(func):
    """Model problems end like every other bad input: one line, exit status 2."""

    def wrapped(args):
        from ..models.registry import ModelError

        try:
            return func(args)
        except ModelError as exc:
            print(f"napari-mitosis: error: {exc}", file=sys.stderr)
            return 2

    return wrapped


def _configure_train(p) -> None:
    p.add_argument("--data", required=True, help="the shared data folder, or an export folder with cells.csv")
    p.add_argument("--out", required=True, help="folder for results.json, predictions.csv, train.log and weights/")
    p.add_argument("--classes", nargs="+", help="class names in output order (default: mitotic_figure granulocyte other)")
    p.add_argument("--minutes", type=float, default=30.0, help="time budget for everything (default 30)")
    p.add_argument("--steps", type=int, nargs="+", default=[], help="fixed steps instead of the time budget: one number "
                   "per stage, or four (stage 1, 2, 3, baseline)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds by slide/frame group (default 5)")
    p.add_argument("--run-folds", type=int, default=1, help="how many folds to train and test; fold 0's models are saved")
    p.add_argument("--fold-ids", type=int, nargs="+", default=[], help="run these folds instead (e.g. 2 3 4)")
    p.add_argument("--loso", nargs="*", help="sources to hold out one at a time (leave-one-source-out)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--kappa", type=float, default=0.3, help="weight of the class loss in the joint stage (eq. 9)")
    p.add_argument("--eval-cap", type=int, default=250, help="test at most this many cells per source/class/status")
    p.add_argument("--no-baseline", action="store_true", help="skip the Ciresan-style baseline CNN")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ship", action="store_true", help="copy the fold-0 weights into the package's models/weights/")


def register(sub) -> None:
    """Add ``classify`` and ``train classifier``."""
    c = sub.add_parser("classify", help="classify cells: mitotic figure / granulocyte / other, with refined position")
    c.add_argument("input", help="a folder of crops (32 um a side), one crop, or an image/slide with --points")
    c.add_argument("--points", help="CSV with x, y (level-0 px) and optional id: classify the cells there")
    c.add_argument("--mpp", type=float, help="pixel size, um/px (crops: default 0.25; slides: from the file)")
    c.add_argument("--out", required=True, help="CSV to write: file or id, p_<class>..., class, x, y")
    c.add_argument("--model", default="cell-gstn", help="registry name (default cell-gstn; or cell-cnn-baseline)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda")
    c.add_argument("--batch", type=int, default=64)
    c.set_defaults(func=_clear_errors(cmd_classify))
    train.add_trainer("classifier", "train the cell classifier (guided spatial transformer + baseline)",
                      _configure_train, _clear_errors(cmd_train))
