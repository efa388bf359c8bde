"""Nucleus sub-commands: segment, and ``train nuclei``.

    napari-mitosis segment IMAGE [--mpp UM] [--roi x,y,w,h] --out labels.tif [--table nuclei.csv]
                           [--method unet|log] [--device auto|cpu|cuda] [--tissue-only]
    napari-mitosis train nuclei --data ../shared/data/nuclei --out DIR [--minutes 30] [--ship]
    napari-mitosis train nuclei --arch hover --data ../shared/data/nuclei --out DIR [--minutes 60] [--ship]
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from . import train
from ._common import parse_roi, progress_bar

#: Largest label image written as PNG (pixels); TIFF is written tile by tile, any size.
PNG_LIMIT = 100_000_000
TIFF_TILE = 256


def _level0_tiles(labels, attrs, dtype):
    """The label image at the input's (level-0) size, tile by tile (bounded memory)."""
    import numpy as np

    h, w = attrs["shape"]
    ds = attrs["downsample"]
    lab = labels
    for y0 in range(0, h, TIFF_TILE):
        rows = np.minimum(((np.arange(y0, y0 + TIFF_TILE) + 0.5) / ds).astype(np.int64), lab.shape[0] - 1)
        for x0 in range(0, w, TIFF_TILE):
            cols = np.minimum(((np.arange(x0, x0 + TIFF_TILE) + 0.5) / ds).astype(np.int64), lab.shape[1] - 1)
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            block = np.asarray(lab[r0:r1, c0:c1])
            t = block[(rows - r0)[:, None], (cols - c0)[None, :]].astype(dtype)
            t[max(0, h - y0):, :] = 0  # padding beyond the image
            t[:, max(0, w - x0):] = 0
            yield t


def cmd_segment(args) -> int:
    import numpy as np

    from ..io import open_slide
    from ..pipeline import run
    from ..pipeline.nuclei import labels_at_level0, segment_task

    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff", ".png"):
        raise ValueError(f"--out must end in .tif, .tiff or .png (a label image), got {out.name!r}")
    with open_slide(args.image, mpp=args.mpp) as slide:
        roi = parse_roi(args.roi) if args.roi else None
        tissue = None
        if args.tissue_only:
            from ..pipeline import tissue_task

            bar = progress_bar("tissue")
            try:
                tissue = run(tissue_task(slide), bar)
            finally:
                bar.close()
        bar = progress_bar("segmenting nuclei")
        try:
            labels, table = run(
                segment_task(slide, roi=roi, method=args.method, device=args.device, tile=args.tile, tissue=tissue,
                             **({"model": args.model} if args.model else {})),
                bar,
            )
        finally:
            bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(table)
    h, w = table.attrs["shape"]
    if out.suffix.lower() == ".png":
        if h * w > PNG_LIMIT:
            raise ValueError(f"a {w} x {h} px label PNG is too large to write; use a .tif (written tile by tile)")
        if n > 65535:
            raise ValueError(f"{n} nuclei do not fit a 16-bit PNG; write a .tif instead")
        from skimage.io import imsave

        imsave(out, labels_at_level0(labels, table.attrs).astype(np.uint16), check_contrast=False)
    else:
        import tifffile

        dtype = np.uint16 if n <= 65535 else np.uint32
        tifffile.imwrite(out, data=_level0_tiles(labels, table.attrs, dtype), shape=(h, w), dtype=dtype,
                         tile=(TIFF_TILE, TIFF_TILE), compression="zlib")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        from ..io.detections import atomic_write_text, safe_csv_text

        atomic_write_text(args.table, safe_csv_text(table))
    print(f"{n} nuclei ({args.method}) in {w} x {h} px -> {out}" + (f", table -> {args.table}" if args.table else ""))
    return 0


def configure_train(p) -> None:
    p.add_argument("--data", required=True, help="the nuclei data folder (monuseg_train/, miccai15/, gbm40/)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, history, log, metrics")
    p.add_argument("--arch", choices=["unet", "hover"], default="unet",
                   help="unet: the from-scratch U-Net (nuclei-unet); hover: EfficientNet-Lite0 encoder + HoVer "
                        "distance maps (nuclei-hover; resumes from OUT/checkpoint.pt, else warm-starts from the "
                        "shipped nuclei-hover, else from ImageNet)")
    p.add_argument("--export-only", action="store_true",
                   help="hover: do not train; write nuclei-hover from OUT/checkpoint.pt (with --ship: into the package)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-time budget (default 30); resumes if --out has a checkpoint")
    p.add_argument("--patch", type=int, default=160, help="patch side at 0.5 um/px, a multiple of 16 (default 160)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--base", type=int, default=16, help="U-Net base width (default 16)")
    p.add_argument("--val-every", type=int, default=150, help="validate and checkpoint every N steps")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument("--ship", action="store_true",
                   help="write nuclei-unet (or with --arch hover nuclei-hover) .pt/.json/.md into the package's weights "
                        "folder (default: into --out)")
    p.add_argument("--normalize", choices=["none", "macenko", "reinhard", "neural"], default="none",
                   help="stain-normalise every training and validation image once at load time (default none)")
    p.add_argument("--norm-reference", help="reference image for --normalize (default: the training image "
                   "monuseg_train/images/TCGA-A7-A13F-01Z-00-DX1.jpg of --data)")


def cmd_train(args) -> int:
    from ..models.registry import WEIGHTS_DIR
    from ..training.train_nuclei import TrainConfig
    from ..training.train_nuclei import train as run_training

    if args.arch == "hover":
        return _train_hover(args)
    if args.patch % 16 or args.patch < 32:
        raise ValueError(f"--patch must be a multiple of 16 and at least 32, got {args.patch}")
    if args.minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        minutes=args.minutes,
        patch=args.patch,
        batch=args.batch,
        lr=args.lr,
        base=args.base,
        seed=args.seed,
        val_every=args.val_every,
        threads=args.threads,
        resume=not args.fresh,
        max_steps=args.max_steps,
        weights_dir=str(WEIGHTS_DIR) if args.ship else None,
        normalize=args.normalize,
        norm_reference=args.norm_reference,
        command="napari-mitosis " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )

    def log(msg):
        print(msg, flush=True)

    run_training(cfg, log=log)
    return 0


def _train_hover(args) -> int:
    from ..models.registry import WEIGHTS_DIR
    from ..training.train_nuclei_net import HoverConfig, export, train_hover

    if args.minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    cfg = HoverConfig(
        data=args.data, out=args.out, minutes=args.minutes, patch=192 if args.patch == 160 else args.patch,
        batch=args.batch, lr=args.lr, seed=args.seed, val_every=300 if args.val_every == 150 else args.val_every,
        threads=args.threads, resume=not args.fresh, max_steps=args.max_steps,
        weights_dir=str(WEIGHTS_DIR) if args.ship else args.out, ship=args.ship,
        command="napari-mitosis " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )

    def log(msg):
        print(msg, flush=True)

    if args.export_only:
        export(cfg, log=log)
    else:
        train_hover(cfg, log=log)
    return 0


def register(sub) -> None:
    """Add ``segment`` and the ``nuclei`` trainer."""
    s = sub.add_parser("segment", help="segment nuclei: write an instance label image (and a table)")
    s.add_argument("image", help="a slide or image (SVS, NDPI, TIFF, OME-Zarr, PNG, JPEG)")
    s.add_argument("--out", required=True, help="label image to write (.tif or .png), the input's (or ROI's) size")
    s.add_argument("--table", help="per-nucleus CSV: id, centroid (px, um), area um2, eccentricity, hematoxylin OD")
    s.add_argument("--mpp", type=float, help="pixel size in um/px (required when the file does not record it)")
    s.add_argument("--roi", help="x,y,w,h in level-0 pixels (default: the whole image)")
    s.add_argument("--method", choices=["unet", "log"], default="unet", help="unet: the network (default; --model, nuclei-hover unless given) or log: the classical baseline")
    s.add_argument("--device", default="auto", help="auto (GPU when available), cpu or cuda")
    s.add_argument("--model", help="the network for --method unet: a registry name (default: the shipped "
                   "nuclei-hover; nuclei-unet is the previous U-Net)")
    s.add_argument("--tissue-only", action="store_true", help="skip tiles without tissue (whole slides)")
    s.add_argument("--tile", type=int, default=768, help="tile side at 0.5 um/px (default 768; bounds memory)")
    s.set_defaults(func=cmd_segment)
    train.add_trainer("nuclei", "train a nucleus network (--arch unet|hover) on ../shared/data/nuclei", configure_train, cmd_train)
