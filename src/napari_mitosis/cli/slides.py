"""Slide sub-commands: demo, info, tissue, synth.

    napari-mitosis demo [SLIDE] [--out results] [--gui]
    napari-mitosis info SLIDE [--mpp UM]
    napari-mitosis tissue SLIDE [--mpp UM] --out mask.png
    napari-mitosis synth OUT.ome.tif [--size ROWS COLS] [--seed N] [--mpp UM]
"""

from __future__ import annotations

import json
from pathlib import Path

from ._common import progress_bar


def cmd_info(args) -> int:
    from ..io import open_slide

    with open_slide(args.slide, mpp=args.mpp) as slide:
        print(json.dumps(slide.info(), indent=2))
    return 0


def cmd_tissue(args) -> int:
    import numpy as np
    from skimage.io import imsave

    from ..io import open_slide
    from ..pipeline import run, tissue_task

    with open_slide(args.slide, mpp=args.mpp) as slide:
        bar = progress_bar("tissue")
        try:
            tissue = run(tissue_task(slide, target_mpp=args.target_mpp), bar)
        finally:
            bar.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imsave(out, (tissue.mask * 255).astype(np.uint8), check_contrast=False)
    area = "unknown (no pixel size)" if tissue.area_mm2 is None else f"{tissue.area_mm2:.3f} mm2"
    print(f"tissue: {area}, {tissue.fraction:.1%} of the slide; mask {tissue.mask.shape[1]}x{tissue.mask.shape[0]} "
          f"px (1 px = {tissue.downsample:.2f} level-0 px) -> {out}")
    return 0


def cmd_synth(args) -> int:
    from ..core.synthetic import SyntheticHE
    from ..io.pyramid_writer import write_synthetic_slide

    synth = SyntheticHE(shape=tuple(args.size), seed=args.seed, mpp=args.mpp, mitosis_fraction=args.mitosis_fraction)
    bar = progress_bar("rendering")
    try:
        path = write_synthetic_slide(args.out, synth, tile=args.tile, compression=args.compression, progress=bar)
    finally:
        bar.close()
    if args.truth:
        synth.cells().to_csv(args.truth, index=False)
    print(f"wrote {path} ({args.size[1]} x {args.size[0]} px at {args.mpp} um/px)")
    return 0


def cmd_demo(args) -> int:
    from ..pipeline import run
    from ..pipeline.demo import DEMO_SHAPE, demo_task, synthetic_slide_path

    out = Path(args.out)
    truth = None
    if args.slide is None:
        bar = progress_bar("making a synthetic slide")
        try:
            shape = tuple(args.size) if args.size else DEMO_SHAPE
            slide_path, truth = synthetic_slide_path(out, shape=shape, seed=args.seed, progress=bar)
        finally:
            bar.close()
        print(f"synthetic slide: {slide_path}")
    else:
        slide_path = Path(args.slide)
    bar = progress_bar("demo")
    try:
        summary = run(demo_task(slide_path, out, mpp=args.mpp, truth=truth), bar)
    finally:
        bar.close()
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print(f"results written to {out.resolve()}/ (overview.png, tissue_mask.png, nuclei.csv, scores.csv, counts.csv, "
          "slide_info.json; the whole-slide analysis in analysis/: summary.csv and one folder per slide with "
          "detections.csv, detections.geojson, counts.csv, overview.png)")
    if args.gui:
        return _open_gui(slide_path, args.mpp)
    return 0


def _open_gui(slide_path, mpp=None) -> int:
    import napari

    from ..io import open_slide
    from ..plugin.reader import layer_data
    from ..plugin.widgets.review import ReviewWidget

    viewer = napari.Viewer(title="napari-mitosis")
    data, kwargs, _ = layer_data(open_slide(slide_path, mpp=mpp))
    viewer.add_image(data, **kwargs)
    viewer.window.add_dock_widget(ReviewWidget(viewer), name="Mitosis review", area="right")
    napari.run()
    return 0


def register(sub) -> None:
    """Add the slide sub-commands to the CLI."""

    d = sub.add_parser("demo", help="make (or take) a slide, run the pipeline, write results/")
    d.add_argument("slide", nargs="?", help="a slide to use instead of the synthetic one")
    d.add_argument("--out", default="results", help="output folder (default: results)")
    d.add_argument("--mpp", type=float, help="pixel size override, um/px")
    d.add_argument("--size", type=int, nargs=2, metavar=("ROWS", "COLS"), help="synthetic slide size (default 4096 6144)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--gui", action="store_true", help="then open napari with the slide and the widget")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="print a slide's metadata as JSON")
    i.add_argument("slide")
    i.add_argument("--mpp", type=float, help="pixel size override, um/px")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("tissue", help="write a slide's tissue mask as PNG")
    t.add_argument("slide")
    t.add_argument("--out", required=True, help="mask PNG to write")
    t.add_argument("--mpp", type=float, help="pixel size override, um/px")
    t.add_argument("--target-mpp", type=float, default=8.0, help="mask pixel size, um (default 8)")
    t.set_defaults(func=cmd_tissue)

    s = sub.add_parser("synth", help="write a synthetic H&E slide as pyramidal OME-TIFF")
    s.add_argument("out")
    s.add_argument("--size", type=int, nargs=2, default=[4096, 4096], metavar=("ROWS", "COLS"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mpp", type=float, default=0.25)
    s.add_argument("--mitosis-fraction", type=float, default=0.01)
    s.add_argument("--tile", type=int, default=256)
    s.add_argument("--compression", default="jpeg", choices=["jpeg", "jpeg2000", "zlib", "none"])
    s.add_argument("--truth", help="also write the ground-truth cells to this CSV")
    s.set_defaults(func=cmd_synth)
