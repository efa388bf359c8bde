"""Stain normalisation, measured as the paper does (then more): style metrics and structure.

For every source image of other labs and hospitals in ../shared/data, each method normalises it
to the MITOS-ATYPIA-14 style; we then compare with the held-out reference frames (group A03_03,
never seen by the neural network's training):

- colour-histogram correlation and Hellinger distance (all pixels, 256 bins per RGB channel,
  averaged over channels) against the pooled histogram of the reference frames,
- Euclidean distance ΔE (CIE76) between mean tissue Lab colours,
- structure: SSIM of the grayscale image before and after,
- throughput in megapixels per second (CPU, one process).

Usage::

    .venv/bin/python benchmarks/eval_stain.py [--data ../shared/data] [--out docs/stain_results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from skimage.io import imread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_mitosis.core.stain_metrics import delta_e, hellinger, histogram_correlation, histograms, mean_tissue_lab, structure_ssim  # noqa: E402
from napari_mitosis.core.stain_norm import MacenkoNormalizer, ReinhardNormalizer  # noqa: E402


def sources(data: Path, per_set: int):
    """(group, name, rgb, mpp) of images from several labs, hospitals and scanners."""
    out = []
    for p in sorted((data / "stain").glob("*"))[: 2 * per_set]:
        out.append(("stain references", p.name, imread(p)[..., :3], 0.5))
    sets = [
        ("MoNuSeg (TCGA, 7 organs)", data / "nuclei" / "monuseg_train" / "images", 0.25),
        ("GBM40 (Emory)", data / "nuclei" / "gbm40" / "images", 0.5),
        ("MICCAI15 (TCGA brain, H&N)", data / "nuclei" / "miccai15" / "images", None),
        ("EoE biopsy (Vanderbilt)", data / "granulocytes" / "eoe_eosinophils" / "tiles", 0.5),
    ]
    for group, folder, mpp in sets:
        files = sorted(f for f in folder.glob("*") if f.suffix.lower() in (".png", ".jpg", ".tif", ".jpeg"))
        step = max(1, len(files) // per_set)
        for f in files[::step][:per_set]:
            m = mpp if mpp is not None else (0.5 if int("".join(c for c in f.stem if c.isdigit()) or 0) <= 7 else 0.25)
            out.append((group, f.name, imread(f)[..., :3], m))
    from napari_mitosis.io import open_slide

    for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"):
        path = data / "slides" / name
        if path.exists():
            with open_slide(path) as s:
                h, w = s.shape
                out.append(("slides (CMU, TCGA)", name, s.read_region(0, w // 2 - 512, h // 2 - 512, 1024, 1024), s.mpp or 0.5))
    return out


def reference_frames(data: Path):
    frames = sorted((data / "mitosis" / "mitos_atypia14" / "frames").glob("A03_03*"))
    return [imread(f)[..., :3] for f in frames]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--per-set", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "docs" / "stain_results.md"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "stain_results.json"))
    ap.add_argument("--models", nargs="*", default=["stain-mitos-atypia14", "stain-mitos-atypia14-mse-only"])
    ap.add_argument("--extra-models-dir", default=str(ROOT / "benchmarks" / "data" / "models"), help="ablation weights (not shipped)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    data = Path(args.data)
    refs = reference_frames(data)
    ref_hist = np.mean([histograms(r) for r in refs], axis=0)
    ref_lab = np.mean([mean_tissue_lab(r) for r in refs], axis=0)
    target = refs[0]  # the classical methods are fitted on one reference frame

    methods = {"none (input)": None, "Reinhard": ReinhardNormalizer().fit(target), "Macenko (SVD)": MacenkoNormalizer().fit(target)}
    from napari_mitosis.models.registry import list_models
    from napari_mitosis.models.stain_net import NeuralStainNormalizer

    extra = Path(args.extra_models_dir)

    def neural(name, **kw):
        if name in list_models("stain"):
            return NeuralStainNormalizer(model=name, device="cpu", **kw)
        if extra.is_dir() and name in list_models("stain", folder=extra):
            return NeuralStainNormalizer(model=name, device="cpu", folder=extra, **kw)
        return None

    main_name, ablation_name = args.models[0], args.models[1] if len(args.models) > 1 else None
    candidates = {
        "neural, chroma only, MSE loss (paper's ablation)": (ablation_name, {"match_lightness": False}),
        "neural, chroma only, MSE + class. loss (paper)": (main_name, {"match_lightness": False}),
        "neural + lightness matching (ours)": (main_name, {}),
    }
    for label, (name, kw) in candidates.items():
        norm = neural(name, **kw) if name else None
        if norm is not None:
            methods[label] = norm
    ft = neural(main_name)
    if ft is not None:
        t0 = time.perf_counter()
        ft.fit(target, mpp=0.2455)
        methods["neural + lightness, fitted to the frame (ours)"] = ft
        print(f"fine-tuning on the reference frame took {time.perf_counter() - t0:.1f} s")

    rows = []
    for group, name, rgb, mpp in sources(data, args.per_set):
        for label, norm in methods.items():
            t0 = time.perf_counter()
            out = rgb if norm is None else norm.transform(rgb, mpp=mpp)
            dt = time.perf_counter() - t0
            rows.append(
                {
                    "group": group,
                    "image": name,
                    "method": label,
                    "hist_correlation": histogram_correlation(out, ref_hist),
                    "hellinger": hellinger(out, ref_hist),
                    "delta_e": delta_e(out, ref_lab),
                    "ssim": structure_ssim(rgb, out),
                    "mpx_per_s": rgb.shape[0] * rgb.shape[1] / 1e6 / dt if norm is not None else float("nan"),
                    "nan_or_overflow": bool(not np.isfinite(out.astype(float)).all()),
                }
            )
        print(f"{group:28s} {name:40s} done")
    Path(args.json).write_text(json.dumps(rows, indent=1))
    write_markdown(rows, Path(args.out), len(refs))


def write_markdown(rows, out: Path, n_refs: int):
    import pandas as pd

    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["method"]))
    agg = df.groupby("method").agg(
        hist_correlation=("hist_correlation", "mean"),
        hellinger=("hellinger", "mean"),
        delta_e=("delta_e", "mean"),
        ssim=("ssim", "mean"),
        mpx_per_s=("mpx_per_s", "median"),
        images=("image", "count"),
    ).loc[order]
    lines = [
        "# Stain normalisation results",
        "",
        f"Generated by `.venv/bin/python benchmarks/eval_stain.py` on {time.strftime('%Y-%m-%d')} "
        f"(2-core CPU, one thread). Target style: MITOS-ATYPIA-14; reference statistics pooled over the "
        f"{n_refs} held-out frames of group A03_03. Source images: {df['image'].nunique()} images of "
        f"{df['group'].nunique()} groups of labs, hospitals and scanners.",
        "",
        "| method | histogram correlation (1 best) | Hellinger (0 best) | ΔE mean tissue colour (0 best) | SSIM structure (1 best) | MP/s (median) |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in agg.iterrows():
        mps = "-" if np.isnan(r.mpx_per_s) else f"{r.mpx_per_s:.2f}"
        lines.append(f"| {m} | {r.hist_correlation:.3f} | {r.hellinger:.3f} | {r.delta_e:.1f} | {r.ssim:.3f} | {mps} |")
    lines += ["", "Paper (BACH test images, its own reference): SVD 0.18 / 0.83, CNN (MSE + class.) 0.48 / 0.58 (correlation / Hellinger).", ""]
    lines += ["## Per source group (histogram correlation / Hellinger / ΔE)", ""]
    groups = list(dict.fromkeys(df["group"]))
    lines.append("| method | " + " | ".join(groups) + " |")
    lines.append("|---|" + "---|" * len(groups))
    for m in order:
        cells = []
        for g in groups:
            sub = df[(df.method == m) & (df.group == g)]
            cells.append(f"{sub.hist_correlation.mean():.2f} / {sub.hellinger.mean():.2f} / {sub.delta_e.mean():.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    nan = df["nan_or_overflow"].any()
    lines += ["", f"NaN or overflow in any output: {'YES' if nan else 'no'}.", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
