"""Detection sub-commands: detect, analyze.

    napari-mitosis detect INPUT [--mpp UM] [--roi x,y,w,h] --out detections.csv [--scheduler ADDRESS] [--workers N]
    napari-mitosis analyze SLIDE... --out DIR [--mpp UM] [--scheduler ADDRESS] [--workers N]
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import parse_roi, progress_bar


def _params(args, scheduler):
    from ..pipeline.detect import make_params

    thresholds = {}
    for item in args.threshold or []:
        key, _, value = item.partition("=")
        try:
            thresholds[key if key.startswith("detect_") else f"detect_{key}"] = float(value)
        except ValueError:
            raise ValueError(f"--threshold must be NAME=VALUE, e.g. mitotic_figure=0.6; got {item!r}") from None
    first = None if str(args.first_pass).lower() in ("none", "off", "") else args.first_pass
    return make_params(model=args.model, device=args.device, candidates=args.candidates,
                       thresholds=thresholds or None, torch_threads=1 if (args.workers > 1 or scheduler) else 0,
                       screen_model=first, operating_point=args.operating_point, views=args.views)


def cmd_detect(args) -> int:
    from ..io.detections import write_detections
    from ..pipeline import run
    from ..pipeline.analyze import detect_slide_task, make_runner

    roi = parse_roi(args.roi) if args.roi else None
    params = _params(args, args.scheduler)
    runner = make_runner(args.scheduler, args.workers)
    bar = progress_bar("detect")
    try:
        det = run(detect_slide_task(args.input, mpp=args.mpp, roi=roi, all_tissue=not args.no_tissue_mask,
                                    runner=runner, params=params), bar)
    finally:
        bar.close()
        runner.close()
    keep = [c for c in det.columns if c in ("x", "y", "class", "score", "status")]
    table = det[keep].copy()
    table.attrs["mpp"] = det.attrs["mpp"]
    write_detections(table, args.out, slide=Path(args.input).name)
    counts = table["class"].value_counts()
    msg = (f"{counts.get('mitotic_figure', 0)} mitotic figure(s), {counts.get('granulocyte', 0)} granulocyte(s) "
           f"in {det.attrs['tiles']} tile(s) -> {args.out}")
    if det.attrs.get("no_tissue"):
        msg = f"no tissue found in {args.input}: no detections (use --no-tissue-mask to analyse it anyway) -> {args.out}"
    print(msg)
    for tile, err in det.attrs.get("failed_tiles", []):
        print(f"warning: tile x={tile[0]} y={tile[1]} w={tile[2]} h={tile[3]} skipped: {err}", file=sys.stderr)
    if det.attrs.get("partial"):
        print("warning: the result is PARTIAL (tiles could not be read, see above)", file=sys.stderr)
    return 0


def cmd_analyze(args) -> int:
    from ..pipeline import run
    from ..pipeline.analyze import analyze_task

    roi = parse_roi(args.roi) if args.roi else None
    params = _params(args, args.scheduler)
    bar = progress_bar("analyze")
    try:
        summary = run(analyze_task(args.slides, args.out, mpp=args.mpp, roi=roi, scheduler=args.scheduler,
                                   workers=args.workers, params=params), bar)
    finally:
        bar.close()
    for r in summary.to_dict("records"):
        if r["status"] == "error":
            print(f"{Path(r['slide']).name}: ERROR: {r['message']}")
            continue
        print(f"{Path(r['slide']).name}: {r['status']}; {_i(r['mitotic_figures'])} mitotic figure(s), "
              f"{_f(r['mitotic_per_2.37mm2'])} per 2.37 mm2, hotspot {_i(r['hotspot_mitotic'])} "
              f"({_f(r['hotspot_per_2.37mm2'])} per 2.37 mm2); {_i(r['granulocytes'])} granulocyte(s); {r['message']}")
    print(f"results in {Path(args.out).resolve()}/ (summary.csv; per slide: detections.csv, detections.geojson, "
          "counts.csv, overview.png)")
    return 1 if (summary["status"] == "error").all() else 0


def _i(v):
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "n/a"


def _f(v):
    try:
        return f"{float(v):.1f}"
    except (TypeError, ValueError):
        return "n/a"


def _common(p):
    p.add_argument("--mpp", type=float, help="pixel size in um/px (needed when the file does not record it)")
    p.add_argument("--roi", help="x,y,w,h in level-0 pixels (default: all tissue)")
    p.add_argument("--scheduler", help="address of a dask.distributed scheduler (e.g. tcp://host:8786); "
                                       "default: local threads")
    p.add_argument("--workers", type=int, default=1, help="local worker threads (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--sensitivity", "--operating-point", dest="operating_point", default="balanced",
                   choices=["balanced", "screening"],
                   help="balanced (default): the best F1 on validation labs the models never saw; screening: "
                        "recall >= 0.9 on each of them, more false alarms to review")
    p.add_argument("--threshold", action="append", metavar="NAME=VALUE",
                   help="override a detection threshold, e.g. mitotic_figure=0.7 (repeatable; a free threshold "
                        "on the score sqrt(p_dense * p_classifier))")
    p.add_argument("--views", type=int, default=None, choices=[1, 2, 4, 8],
                   help="test-time views: the classifier's mean over this many flips and rotations of each "
                        "candidate (default: the model card's, which its thresholds were chosen with; more is "
                        "slower, 1 is the fastest)")
    p.add_argument("--candidates", default="dense", choices=["dense", "nuclei", "heatmap", "both"],
                   help="candidate stage: cell-dense likelihood peaks (default), or the earlier hematoxylin-blob "
                        "screening, weakly supervised heatmap peaks, or both (these use cell-gstn)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="second stage classifier (default: cell-effnet with dense candidates, else cell-gstn, "
                        "the guided spatial transformer)")
    p.add_argument("--first-pass", default="cell-screen", metavar="MODEL",
                   help="--candidates nuclei: learned first pass on the screening image; only what it keeps goes "
                        "to the classifier (default cell-screen; 'none': every screened blob, slower)")


def _configure_train_screen(p):
    p.add_argument("--data", default=None, help="the labelled data (default ../shared/data)")
    p.add_argument("--minutes", type=float, default=4.0, help="training time (default 4, as the shipped model)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for the model files (default: ship into the package)")


def cmd_train_screen(args) -> int:
    from ..training.train_screen import main

    argv = ["train", "--minutes", str(args.minutes), "--seed", str(args.seed), "--ship"]
    argv += ["--data", args.data] if args.data else []
    argv += ["--out", args.out] if args.out else []
    return main(argv)


def _configure_train_detector(p):
    from ..training.train_detector import configure

    configure(p)


def cmd_train_detector(args) -> int:
    from ..training.train_detector import run_stage

    return run_stage(args)


def register(sub) -> None:
    """Add the detection sub-commands to the CLI."""
    from . import train

    train.add_trainer("screen", "train cell-screen, the learned first pass of whole-slide detection",
                      _configure_train_screen, cmd_train_screen)
    train.add_trainer("detector", "train the detector's two stages (cell-dense, cell-effnet), resumable",
                      _configure_train_detector, cmd_train_detector)
    d = sub.add_parser("detect", help="detect mitotic figures and granulocytes in a slide or image -> CSV/GeoJSON")
    d.add_argument("input", help="a slide or a plain image (plain images need --mpp)")
    d.add_argument("--out", required=True, help="detections file to write (.csv or .geojson)")
    d.add_argument("--no-tissue-mask", action="store_true", help="analyse the whole region, not only detected tissue")
    _common(d)
    d.set_defaults(func=cmd_detect)

    a = sub.add_parser("analyze", help="detect, count per 2.37 mm2, find the hotspot, write per-slide results")
    a.add_argument("slides", nargs="+", help="slides (or images) to analyse")
    a.add_argument("--out", required=True, help="output folder")
    _common(a)
    a.set_defaults(func=cmd_analyze)
