"""Nucleus segmentation: validation metrics (with and without stain normalisation) and throughput.

    .venv/bin/python benchmarks/bench_nuclei.py [--data ../shared/data/nuclei] [--threads 1] [--out bench_nuclei.json]
    .venv/bin/python benchmarks/bench_nuclei.py --norm-model benchmarks/data/nuclei_norm_macenko --skip-throughput
    .venv/bin/python benchmarks/bench_nuclei.py --compare nuclei-hover,nuclei-unet,log --threads 2 [--skip-throughput]

``--compare A,B,...``: every validation image through the user's path (``pipeline.nuclei.segment_image``
at the image's own pixel size, tiled as ``napari-mitosis segment`` tiles, labels resampled to the
image's size as ``segment --out`` writes them), for each shipped model name (or ``log``, the
classical baseline), scored against the image's instance labels: Dice, AJI, PQ per source. With
it, the throughput is measured for the same names.

``--norm-model DIR``: also evaluate a U-Net trained on stain-normalised images
(``napari-mitosis train nuclei --normalize macenko ...``, its nuclei-unet.{pt,json} in DIR) on the
validation split normalised the same way (method and reference read from its nuclei-unet.json), and
print the paper-style table (section 4.1.1): un-normalised / normalised at test time only /
trained and tested on normalised images.

Validation: the by-image split of ``models.train_nuclei.VALIDATION``; predictions at 0.5 um/px are
resampled (nearest) to each image's own size and scored against its labels (pixel sensitivity,
specificity, Dice, Jaccard over all validation images; AJI and PQ per image, averaged).
"With stain normalisation" = Macenko (core.stain_norm) fitted on ../shared/data/stain/tiatoolbox_target.png
applied to every validation image at test time (the U-Net was trained with stain augmentation,
not on normalised images).

Throughput (``--compare``): also with CMU-1 declared 0.25 um/px (``--mpp 0.25``), i.e. input megapixels per
second of a 40x scan, the issue's unit.

Throughput: ``pipeline.nuclei.segment_task`` over a 2048 x 2048 tissue region of a real slide (CMU-1 SVS,
0.499 um/px), best of 3 runs; megapixels of the input (level 0) per second, CPU, ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def validation(data, normaliser=None, folder=None, log=True):
    """Validation metrics; ``normaliser`` is applied to every image at 0.5 um/px (as the trainer does)."""
    from napari_mitosis.models.registry import WEIGHTS_DIR, load_model
    from napari_mitosis.training.train_nuclei import (
        evaluate_log,
        evaluate_unet,
        list_images,
        load_sample,
        normalize_sample,
    )

    items = [i for i in list_images(data) if i["split"] == "val"]
    samples = [normalize_sample(load_sample(i, keep_native=True), normaliser) for i in items]
    net, spec = load_model("nuclei-unet", device="cpu", folder=folder or WEIGHTS_DIR)
    params = {k: v for k, v in spec.thresholds.items()}
    out = {"unet": evaluate_unet(net, samples, params, native=True)}
    if log:
        out["log"] = evaluate_log(samples, native=True)
    return out


def checkpoint_validation(data, normaliser, checkpoint, folder):
    """A training checkpoint (checkpoint.pt of a run) with the thresholds of the model in ``folder``."""
    import torch

    from napari_mitosis.models.registry import read_spec
    from napari_mitosis.training.train_nuclei import (
        evaluate_unet,
        list_images,
        load_sample,
        normalize_sample,
    )

    spec = read_spec("nuclei-unet", folder)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = spec.build()
    net.load_state_dict(state["net"])
    net.eval()
    items = [i for i in list_images(data) if i["split"] == "val"]
    samples = [normalize_sample(load_sample(i, keep_native=True), normaliser) for i in items]
    return int(state["step"]), evaluate_unet(net, samples, dict(spec.thresholds), native=True)


def normalised_model_table(data, folder, baseline=None, checkpoint=None):
    """Section 4.1.1: shipped model (un-normalised, test-time-normalised) vs a model trained on normalised images."""
    from napari_mitosis.models.registry import read_spec
    from napari_mitosis.training.train_nuclei import make_load_normalizer

    spec = read_spec("nuclei-unet", folder)
    sn = (spec.training or {}).get("stain_normalization")
    if not sn:
        raise SystemExit(f"{folder}/nuclei-unet.json: not trained with --normalize")
    norm = make_load_normalizer(sn["method"], data, sn["reference"])
    rows = {}
    rows["un-normalised (shipped nuclei-unet)"] = (baseline or validation(data, log=False))["unet"]
    rows[f"{sn['method']} at test time only (shipped nuclei-unet)"] = validation(data, norm, log=False)["unet"]
    rows[f"{sn['method']}, trained and tested ({Path(folder).name}, {spec.training.get('steps')} steps)"] = validation(
        data, norm, folder, log=False)["unet"]
    if checkpoint:
        step, m = checkpoint_validation(data, norm, checkpoint, folder)
        rows[f"{sn['method']}, trained and tested, checkpoint at step {step}"] = m
    return {"method": sn["method"], "reference": sn["reference"], "steps": spec.training.get("steps"),
            "minutes": spec.training.get("minutes"), "rows": rows}


def markdown_table(table) -> str:
    keys = ("sensitivity", "specificity", "dice", "jaccard", "aji", "pq")
    lines = ["| model | sensitivity | specificity | Dice | Jaccard | AJI | PQ |", "|---|---|---|---|---|---|---|"]
    for name, m in table["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
    lines += ["", "By source (Dice / AJI / PQ):", "", "| model | " + " | ".join(
        next(iter(table["rows"].values()))["per_source"]) + " |", "|---" * 4 + "|"]
    for name, m in table["rows"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{v['dice']:.3f} / {v['aji']:.3f} / {v['pq']:.3f}" for v in m["per_source"].values()) + " |")
    return "\n".join(lines)


def throughput(slide_path, roi, method, mpp=None, repeat=3, **kw):
    """Best of ``repeat`` runs (the machine is shared; the minimum is the least disturbed)."""
    from napari_mitosis.io import open_slide
    from napari_mitosis.pipeline.nuclei import segment_nuclei

    with open_slide(slide_path, mpp=mpp) as slide:
        segment_nuclei(slide, roi=(roi[0], roi[1], 256, 256), method=method, device="cpu", **kw)  # warm up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            labels, table = segment_nuclei(slide, roi=roi, method=method, device="cpu", **kw)
            times.append(time.perf_counter() - t0)
        dt = min(times)
    mp = roi[2] * roi[3] / 1e6
    return {"region_px": [roi[2], roi[3]], "seconds": round(dt, 2), "mp_per_s": round(mp / dt, 3),
            "nuclei": len(table)}


def compare(data, names):
    """Per-source mean Dice / AJI / PQ of each method on the validation images, through segment_image."""
    import numpy as np
    from skimage.io import imread

    from napari_mitosis.core.nuclei import segmentation_metrics
    from napari_mitosis.pipeline.nuclei import labels_at_level0, segment_image
    from napari_mitosis.training.train_nuclei import list_images

    items = [i for i in list_images(data) if i["split"] == "val"]
    out = {}
    for name in names:
        rows = []
        t0 = time.perf_counter()
        for it in items:
            rgb = imread(it["image"])[..., :3]
            truth = imread(it["target"]).astype(np.int32)
            kw = {"method": "log"} if name == "log" else {"method": "unet", "model": name, "device": "cpu"}
            labels, table = segment_image(rgb, it["mpp"], **kw)
            m = segmentation_metrics(truth, labels_at_level0(labels, table.attrs))
            rows.append({"source": it["source"], "name": it["name"], **{k: m[k] for k in ("dice", "aji", "pq")}})
        res = {"seconds": round(time.perf_counter() - t0, 1), "images": rows}
        for src in ["all"] + sorted({r["source"] for r in rows}):
            sel = [r for r in rows if src == "all" or r["source"] == src]
            res[src] = {k: round(float(np.mean([r[k] for r in sel])), 4) for k in ("dice", "aji", "pq")} | {"n": len(sel)}
        out[name] = res
        print(name, {k: v for k, v in res.items() if k not in ("images",)}, flush=True)
    return out


def compare_table(result) -> str:
    names = list(result)
    srcs = [k for k in result[names[0]] if k not in ("images", "seconds")]
    lines = ["| method | " + " | ".join(f"{s} (n={result[names[0]][s]['n']}) Dice / AJI / PQ" for s in srcs) + " |",
             "|---" * (len(srcs) + 1) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(
            f"{result[n][s]['dice']:.3f} / {result[n][s]['aji']:.3f} / {result[n][s]['pq']:.3f}" for s in srcs) + " |")
    return "\n".join(lines)


def main():
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(SHARED / "nuclei"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench_nuclei.json")
    p.add_argument("--skip-validation", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--norm-model", help="folder of a nuclei-unet trained with --normalize (section 4.1.1 table)")
    p.add_argument("--compare", help="comma-separated model names and/or 'log': validation through segment_image")
    p.add_argument("--norm-checkpoint", help="also a checkpoint.pt of that run (e.g. one saved at the shipped model's step count)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads}
    if args.compare:
        names = args.compare.split(",")
        result["compare"] = compare(args.data, names)
        print(compare_table(result["compare"]))
        if not args.skip_throughput:
            cmu = SHARED / "slides" / "CMU-1-Small-Region.svs"
            # input MP/s at 0.25 um/px (the bar): CMU-1 declared 0.25 um/px, so 2 input pixels per
            # working pixel each way, as a 40x scan; and at its own 0.499 um/px
            result["throughput_cpu"] = {}
            for n in names:
                kw = {} if n == "log" else {"model": n}
                meth = "log" if n == "log" else "unet"
                result["throughput_cpu"][n] = {
                    "at_0.25_um_px": throughput(cmu, (100, 0, 2048, 2944), meth, mpp=0.25, **kw),
                    "at_0.499_um_px": throughput(cmu, (100, 400, 2048, 2048), meth, **kw),
                }
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result.get("throughput_cpu", {}), indent=1))
        return
    if args.norm_model:
        table = normalised_model_table(args.data, args.norm_model, checkpoint=args.norm_checkpoint)
        result["trained_normalised"] = table
        print(markdown_table(table))
    elif not args.skip_validation:
        from skimage.io import imread

        from napari_mitosis.core.stain_norm import MacenkoNormalizer

        result["validation"] = validation(args.data)
        target = imread(SHARED / "stain" / "tiatoolbox_target.png")[..., :3]
        result["validation_macenko"] = validation(args.data, MacenkoNormalizer().fit(target))
    if not args.skip_throughput:
        cmu = SHARED / "slides" / "CMU-1-Small-Region.svs"
        bench = {}
        for method in ("log", "unet"):
            bench[f"cmu1_{method}"] = throughput(cmu, (100, 400, 2048, 2048), method)
        result["throughput_cpu"] = bench
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
