"""Stain commands: ``normalize`` and ``train stain``.

    napari-mitosis normalize IMAGE [--target REF|norm.json] [--method reinhard|macenko|neural]
                             [--roi x,y,w,h] [--level L] [--mpp UM] [--save norm.json] --out OUT
    napari-mitosis train stain [--data ../shared/data] [--minutes 15] [--out DIR]
"""

from __future__ import annotations

import json
from pathlib import Path

from . import train
from ._common import parse_roi, progress_bar

#: A whole level larger than this needs --roi or a coarser --level.
MAX_OUTPUT_PIXELS = 200_000_000


def cmd_normalize(args) -> int:
    import numpy as np

    from ..core.stain_norm import save_normalizer
    from ..models.stain_net import load_normalizer
    from ..io import open_slide
    from ..pipeline import run
    from ..pipeline.stain import make_normalizer, normalize_region_task, read_reference

    roi = parse_roi(args.roi) if args.roi else None
    if args.target and str(args.target).endswith(".json"):
        norm = load_normalizer(args.target)
    else:
        norm = make_normalizer(args.method, device=args.device)
        if args.target:
            norm.fit(*read_reference(args.target))
        elif norm.method != "neural":
            raise ValueError(f"--method {norm.method} needs --target REF (an image of the style to match)")
    if args.save:
        save_normalizer(norm, args.save)
    with open_slide(args.image, mpp=args.mpp) as slide:
        level = args.level
        if not 0 <= level < slide.level_count:
            raise ValueError(f"--level {level}: the slide has levels 0..{slide.level_count - 1}")
        if roi:
            x, y, w0, h0 = roi
            ds = slide.level_downsamples[level]
            w, h = max(1, round(w0 / ds)), max(1, round(h0 / ds))
        else:
            x, y = 0, 0
            h, w = slide.level_shapes[level]
        if w * h > MAX_OUTPUT_PIXELS:
            raise ValueError(f"the region is {w} x {h} px; pass --roi x,y,w,h or a coarser --level")
        bar = progress_bar("normalising")
        try:
            out = run(normalize_region_task(slide, norm, level, x, y, w, h), bar)
        finally:
            bar.close()
        mpp = slide.level_mpp(level)
    write_image(args.out, out, mpp)
    print(f"{norm.method}: wrote {args.out} ({w} x {h} px{'' if mpp is None else f', {mpp:.4g} um/px'})")
    return 0 if np.isfinite(out).all() else 1


def write_image(path, rgb, mpp=None) -> Path:
    """PNG/JPEG via Pillow, TIFF as tiled (and atomic) via tifffile with the pixel size."""
    import tifffile
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    if path.suffix.lower() in (".tif", ".tiff"):
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
        tifffile.imwrite(tmp, rgb, photometric="rgb", tile=(256, 256) if min(rgb.shape[:2]) >= 256 else None, compression="zlib", **res)
    else:
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: write .png, .jpg or .tif")
        dpi = {"dpi": (25400 / mpp, 25400 / mpp)} if mpp else {}
        Image.fromarray(rgb).save(tmp, format=fmt, **dpi)
    tmp.replace(path)
    return path


def cmd_train_stain(args) -> int:
    import torch

    from ..training import train_stain as ts
    from ..models.registry import ModelSpec, save_model

    torch.set_num_threads(args.threads)
    images = ts.load_mitos_frames(args.data)
    val = [im for im in images if im.group == args.val_group]
    trn = [im for im in images if im.group != args.val_group]
    if not val or not trn:
        raise ValueError(f"validation group {args.val_group!r} leaves no training or no validation frames")
    print(f"training on {len(trn)} frames, validating on {len(val)} ({args.val_group})")
    net, log = ts.train(trn, val, minutes=args.minutes, steps=args.steps, batch=args.batch, class_share=args.class_share, seed=args.seed)
    command = (
        f"napari-mitosis train stain --data {args.data} --minutes {args.minutes} --steps {args.steps} "
        f"--batch {args.batch} --class-share {args.class_share} --seed {args.seed} --name {args.name}"
    )
    spec = ModelSpec(
        name=args.name,
        task="stain",
        builder="napari_mitosis.models.stain_net:StainTransferNet",
        config={"width": 16, "n_classes": len(ts.CLASSES)},
        mpp=ts.WORK_MPP,
        patch_size=128,
        classes=ts.CLASSES,
        metrics={"val_chroma_mse": log["best_val_mse"], "steps": log["steps"]},
        training={
            "style": "MITOS-ATYPIA-14 frames (Aperio XT, breast), ../shared/data/mitosis/mitos_atypia14",
            "split": f"frames of group {args.val_group} for validation, the other groups for training",
            "class_share": args.class_share,
            "style_lightness": ts.style_lightness(trn),
            "style_stains": ts.style_stains(trn),  # what keep_hue renders the output with
            "command": command,
        },
    )
    card = stain_card(spec, log)
    out = Path(args.out) if args.out else None
    path = save_model(net, spec, card, **({"folder": out} if out else {}))
    (path.with_suffix(".history.json")).write_text(json.dumps(log["history"], indent=1))
    print(f"wrote {path} (best validation chroma MSE {log['best_val_mse']:.4f} after {log['steps']} steps)")
    return 0


def stain_card(spec, log) -> str:
    return f"""# {spec.name}: neural stain transfer to the MITOS-ATYPIA-14 style

- **What**: re-colours any H&E image in the stain style of the MITOS-ATYPIA-14 frames (Aperio XT,
  breast cancer): the network sees only the luminance (CIE L) and predicts the chroma (a, b).
- **Network**: `StainTransferNet(width=16)`: encoder of 8 3x3 conv (3 with stride 2), a global
  branch of 4 stride-2 conv + FC to a 256-d descriptor with an auxiliary classification head,
  fusion, decoder with up-sampling; batch norm + ReLU. {sum(1 for _ in spec.config)} config keys: {spec.config}.
- **Working resolution**: {spec.mpp} um/px (inputs are rescaled; the chroma is up-sampled onto the
  full-resolution luminance).
- **Data**: {spec.training['style']}. {spec.training['split']}. Inputs are stain-perturbed copies
  (HED optical-density jitter, brightness, contrast, gamma); targets the original chroma.
  Auxiliary classes: {', '.join(spec.classes)} (from the frames' pathologist points).
- **Loss**: (1 - k) MSE(chroma) + k CE(class), k = {spec.training['class_share']}; Adadelta lr 1.0,
  rho 0.9, eps 1e-6, as in the paper.
- **Validation**: best chroma MSE {log['best_val_mse']:.4f} (in units of (ab/110)^2) after {log['steps']} steps.
  Style metrics against the reference and structure preservation: see docs/stain.md.
- **Command**: `{spec.training['command']}`
- **Limits**: one style; `NeuralStainNormalizer.fit(reference)` fine-tunes it to another in about
  a minute on a CPU. Licence of the training data: MITOS-ATYPIA-14 challenge terms (research use).
"""


def _configure_train(p) -> None:
    p.add_argument("--data", default=str(Path.cwd().parent / "shared" / "data"), help="the shared data folder")
    p.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--class-share", type=float, default=0.01, help="weight of the classification loss")
    p.add_argument("--val-group", default="A03_03", help="frame group held out for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="stain-mitos-atypia14")
    p.add_argument("--out", help="folder for the weights (default: the package's weights folder)")


def register(sub) -> None:
    """Add ``normalize`` and the ``train stain`` trainer."""
    n = sub.add_parser("normalize", help="stain-normalise an image or a slide region")
    n.add_argument("image")
    n.add_argument("--target", help="reference image/slide of the style to match, or a saved normaliser (.json)")
    n.add_argument("--method", default="macenko", choices=["reinhard", "macenko", "neural"])
    n.add_argument("--roi", help="x,y,w,h in level-0 pixels (default: the whole level)")
    n.add_argument("--level", type=int, default=0)
    n.add_argument("--mpp", type=float, help="pixel size override, um/px")
    n.add_argument("--device", default="auto", help="auto, cpu or cuda (neural method)")
    n.add_argument("--save", help="also save the fitted normaliser to this .json")
    n.add_argument("--out", required=True, help="output .png, .jpg or .tif")
    n.set_defaults(func=cmd_normalize)
    train.add_trainer("stain", "train the neural stain transfer network", _configure_train, cmd_train_stain)
