"""Nucleus typing sub-commands: ``type``, and ``train typing`` (issue #9).

    napari-mitosis type IMAGE [--mpp UM] [--roi x,y,w,h] [--nuclei nuclei.csv] --out nuclei_types.csv
    napari-mitosis train typing --data ../shared/data --out DIR [--k 3] [--minutes 15] [--ship]
    napari-mitosis train typing --images a.svs b.tif [--mpp UM] --out DIR [--k 3] [--tiles 8]
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from . import train
from ._common import parse_roi, progress_bar


def cmd_type(args) -> int:
    import warnings

    import pandas as pd

    from ..io import open_slide
    from ..pipeline import run
    from ..pipeline.nuclei import segment_task
    from ..pipeline.nucleus_types import TypingError, legend_text, type_nuclei_task

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise TypingError(f"--out must be a .csv file, got {out.name!r}")
    with open_slide(args.image, mpp=args.mpp) as slide:
        roi = parse_roi(args.roi) if args.roi else None
        if args.nuclei:
            table = pd.read_csv(args.nuclei)
            if roi is not None and {"x", "y"} <= set(table.columns):
                x, y, w, h = roi
                table = table[(table.x >= x) & (table.x < x + w) & (table.y >= y) & (table.y < y + h)].reset_index(drop=True)
        else:
            bar = progress_bar("segmenting nuclei")
            try:
                _, table = run(segment_task(slide, roi=roi, device=args.device), bar)
            finally:
                bar.close()
        bar = progress_bar("typing nuclei")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                typed = run(type_nuclei_task(slide, table, model=args.model, device=args.device), bar)
            finally:
                bar.close()
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..io.detections import atomic_write_text, safe_csv_text

    atomic_write_text(out, safe_csv_text(typed, float_format="%.4f"))
    print(f"{len(typed)} nuclei -> {out} ({legend_text(typed)}; model {typed.attrs.get('typing_model')})")
    return 0


def configure_train(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="the shared data folder (../shared/data): nuclei of every set, and its labelled cells for evaluation")
    src.add_argument("--images", nargs="+", help="slides or images of any kind: nuclei of random tissue tiles (no labels)")
    p.add_argument("--out", required=True, help="run folder: checkpoint, history, log, metrics")
    p.add_argument("--pool", choices=["all", "labelled"], default="all",
                   help="with --data: train on nuclei of every image (all, default) or, as the paper, only on the "
                   "labelled cells that are evaluated (their labels are never used in training)")
    p.add_argument("--k", type=int, default=3, help="number of nucleus types K (categories of the code c; default 3)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-time budget (default 15); resumes from --out")
    p.add_argument("--mpp", type=float, help="pixel size of --images when they do not record it")
    p.add_argument("--tiles", type=int, default=8, help="tissue tiles (256 um) per slide with --images (default 8)")
    p.add_argument("--normalize", choices=["reinhard", "macenko", "neural", "none"], default="reinhard",
                   help="stain normalisation before cutting out nuclei (default reinhard)")
    p.add_argument("--norm-reference", help="reference image for --normalize (default: a MoNuSeg breast image of --data)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--n-critic", type=int, default=1, help="critic steps per generator step (default 1)")
    p.add_argument("--width", type=int, default=16, help="base channel width of G and D (default 16)")
    p.add_argument("--q-head-only", action="store_true",
                   help="the mutual-information loss trains only the D_Q head, not the shared body (an ablation)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--max-iters", type=int, help="stop after this many generator steps (smoke tests)")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument("--name", default="nuclei-infogan", help="model name (default nuclei-infogan)")
    p.add_argument("--ship", action="store_true", help="write the model into the package's weights folder (default: --out)")


def cmd_train(args) -> int:
    import torch

    from ..training import train_nucleus_types as tt
    from ..pipeline.nucleus_types import TypingError

    if args.minutes <= 0:
        raise TypingError(f"--minutes must be positive, got {args.minutes}")
    if not 2 <= args.k <= tt.MAX_TYPES:
        raise TypingError(f"--k (the number of types) must be between 2 and {tt.MAX_TYPES}, got {args.k}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a") as logf:

        def log(msg):
            print(msg, flush=True)
            logf.write(msg + "\n")
            logf.flush()

        return _train(args, out, log)


def _train(args, out: Path, log) -> int:
    import numpy as np

    from ..training import train_nucleus_types as tt
    from ..models.registry import WEIGHTS_DIR
    from ..pipeline.nucleus_types import TypingError

    cells = None
    if args.data:
        data = Path(args.data)
        if not data.exists():
            raise TypingError(f"{data}: no such folder; pass the shared data folder or use --images")
        pool, cells, norm = tt.cached_shared(data, args.normalize, args.norm_reference, seed=args.seed, log=log)
        sources = [str(data)]
        if args.pool == "labelled":  # the paper's protocol: train (without labels) on the cells it evaluates
            pool = cells["patches"]
            sources = [f"{data} (the labelled evaluation cells only, labels unused)"]
    else:
        ref = args.norm_reference
        if args.normalize != "none" and ref is None:
            raise TypingError(f"--normalize {args.normalize} with --images needs --norm-reference (an H&E image), or --normalize none")
        norm = tt._norm_for(args.normalize, ref)
        pool = tt.slide_nuclei(args.images, norm, mpp=args.mpp, tiles_per_slide=args.tiles, seed=args.seed, log=log)
        sources = [str(p) for p in args.images]
    tt.check_k(args.k, len(pool))
    log(f"{len(pool)} nuclei for training, K={args.k}" + (f", {len(cells['label'])} labelled cells for evaluation" if cells else ""))
    cfg = tt.TrainConfig(
        out=str(out), k=args.k, minutes=args.minutes, batch=args.batch, n_critic=args.n_critic, width=args.width,
        seed=args.seed, threads=args.threads, max_iters=args.max_iters, checkpoint_every=args.checkpoint_every,
        resume=not args.fresh, name=args.name, data=sources, q_body=not args.q_head_only,
        command=_command(args),
    )
    eval_fn = None
    if cells is not None and len(cells["label"]):
        def eval_fn(model):
            y, classes = tt.eval_labels(cells, args.k)
            m = tt.evaluate_clusters(y, tt.infogan_types(model, cells["patches"])[0], classes, args.k)
            return {"eval_acc": round(m["accuracy"], 4), "eval_nmi": round(m["nmi"], 4)}

    net, history = tt.train_gan(pool, cfg, log=log, eval_fn=eval_fn)
    metrics, counts = {}, {"train": len(pool)}
    if cells is not None and len(cells["label"]):
        metrics = tt.evaluate_all(net, cells, args.k, seed=args.seed)
        counts["eval"] = {str(k): int(v) for k, v in zip(*np.unique(cells["label"], return_counts=True), strict=True)}
        tt.write_json(out / "metrics.json", metrics)
        for key in ("infogan", "kmeans_raw", "kmeans_unet"):
            log(f"{key}: accuracy {100 * metrics[key]['accuracy']:.1f}%, macro F1 {100 * metrics[key]['macro_f1']:.1f}%, "
                f"NMI {metrics[key]['nmi']:.3f}")
    folder = WEIGHTS_DIR if args.ship else out
    path = tt.save_typing_model(net, cfg, norm, metrics, counts, folder, history=history)
    log(f"model -> {path} ({len(history)} checkpoints, {history[-1]['iter'] if history else 0} iterations)")
    return 0


def _command(args) -> str:
    """The command line that reproduces this training run (from the parsed options)."""
    parts = ["napari-mitosis", "train", "typing"]
    parts += ["--data", args.data, "--pool", args.pool] if args.data else ["--images", *args.images]
    for opt in ("out", "k", "minutes", "mpp", "tiles", "normalize", "norm_reference", "batch", "n_critic", "width",
                "threads", "max_iters", "checkpoint_every", "seed", "name"):
        v = getattr(args, opt)
        if v is not None:
            parts += ["--" + opt.replace("_", "-"), str(v)]
    parts += [f for f, on in (("--fresh", args.fresh), ("--ship", args.ship), ("--q-head-only", args.q_head_only)) if on]
    return " ".join(shlex.quote(p) for p in parts)


def register(sub) -> None:
    """Add ``type`` and the ``typing`` trainer."""
    s = sub.add_parser("type", help="type nuclei without labels (InfoGAN): write a per-nucleus CSV with types")
    s.add_argument("image", help="a slide or image (SVS, NDPI, TIFF, OME-Zarr, PNG, JPEG)")
    s.add_argument("--out", required=True, help="nucleus table to write (.csv): id, x, y, ..., type, type_name, p_type_<k>")
    s.add_argument("--mpp", type=float, help="pixel size in um/px (required when the file does not record it)")
    s.add_argument("--roi", help="x,y,w,h in level-0 pixels (default: the whole image)")
    s.add_argument("--nuclei", help="a nucleus table (CSV with x, y in level-0 px, e.g. from segment --table); "
                   "default: segment with the U-Net first")
    s.add_argument("--model", default="nuclei-infogan", help="typing model (default nuclei-infogan)")
    s.add_argument("--device", default="auto", help="auto (GPU when available), cpu or cuda")
    s.set_defaults(func=cmd_type)
    train.add_trainer("typing", "train the unsupervised nucleus typer (InfoGAN) on nuclei of any slides",
                      configure_train, cmd_train)
