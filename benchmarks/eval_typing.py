"""The paper's evaluation of unsupervised nucleus typing (section 4.2.1), on ../shared/data.

InfoGAN (D_Q's type) against k-means on raw pixel vectors and k-means on learned
CNN features (the project's nuclei U-Net encoder, standing in for ImageNet
ResNet-152), each with K clusters matched to the labelled classes by the
Hungarian algorithm. Writes ``benchmarks/typing_results.json`` and prints
markdown tables for docs/typing.md.

    .venv/bin/python benchmarks/eval_typing.py                       # the shipped model(s)
    .venv/bin/python benchmarks/eval_typing.py --model results/typing/k4/nuclei-infogan-k4.pt

The labelled cells are cut out exactly as in training (cached by
``napari_mitosis.training.train_nucleus_types.cached_shared``); see docs/typing.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_mitosis.training import train_nucleus_types as tt
from napari_mitosis.models.registry import WEIGHTS_DIR, load_model

PAPER = {"infogan": 66.6, "kmeans_raw": 44.3, "kmeans_unet": 47.2}
TITLES = {"infogan": "InfoGAN (D_Q)", "kmeans_raw": "k-means, raw pixels", "kmeans_unet": "k-means, U-Net encoder features"}


def load(path_or_name):
    p = Path(path_or_name)
    if p.suffix == ".pt":
        return load_model(p.stem, device="cpu", folder=p.parent)
    return load_model(str(path_or_name), device="cpu", folder=WEIGHTS_DIR)


def per_source(net, cells, k):
    """InfoGAN accuracy within each data source (clusters matched within the source)."""
    y, classes = tt.eval_labels(cells, k)
    types = tt.infogan_types(net, cells["patches"])[0]
    out = {}
    for s in sorted(set(cells["source"])):
        m = cells["source"] == s
        present = [c for c in classes if np.any(y[m] == c)]
        if len(present) >= 2:
            r = tt.evaluate_clusters(y[m], types[m], present, k)
            out[s] = {"n": int(m.sum()), "classes": present, "accuracy": r["accuracy"], "majority": r["majority_baseline"],
                      "nmi": r["nmi"]}
    return out


def markdown(res: dict, k: int) -> str:
    lines = [f"### K = {k}", "", "| model | accuracy % | macro F1 % | NMI | paper accuracy % (K = 3) |", "|---|---|---|---|---|"]
    for key, title in TITLES.items():
        m = res[key]
        lines.append(f"| {title} | {100 * m['accuracy']:.1f} | {100 * m['macro_f1']:.1f} | {m['nmi']:.3f} | {PAPER[key]} |")
    lines.append(f"\nMajority-class accuracy: {100 * res['infogan']['majority_baseline']:.1f}%. "
                 f"NMI of the InfoGAN types with the data source: {res['infogan_vs_source_nmi']:.3f}.\n")
    for key, title in TITLES.items():
        m = res[key]
        lines += [f"**{title}**: precision / sensitivity / F1 (%) per class", "",
                  "| class | precision | sensitivity | F1 | n | matched cluster |", "|---|---|---|---|---|---|"]
        for c, v in m["per_class"].items():
            lines.append(f"| {c} | {100 * v['precision']:.1f} | {100 * v['sensitivity']:.1f} | {100 * v['f1']:.1f} | {v['n']} | "
                         f"{'-' if v['cluster'] is None else v['cluster'] + 1} |")
        head = " | ".join(f"type {c + 1}" for c in m["cluster_order"])
        lines += ["", "Confusion (rows: classes; columns: clusters, matched first):", ""]
        lines.append("| class | " + head + " |")
        lines.append("|---" * (len(m["cluster_order"]) + 1) + "|")
        for c, row in zip(m["classes"], m["confusion"], strict=True):
            lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", nargs="+", default=["nuclei-infogan"], help="registry names or .pt paths (spec beside)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "typing_results.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    _, cells, _ = tt.cached_shared(args.data)
    labels, counts = np.unique(cells["label"], return_counts=True)
    results = {
        "cells": {
            "n": len(cells["label"]),
            "per_class": {str(a): int(b) for a, b in zip(labels, counts, strict=True)},
            "per_class_source": {f"{a}/{s}": int(np.sum((cells["label"] == a) & (cells["source"] == s)))
                                 for a in labels for s in sorted(set(cells["source"]))
                                 if np.any((cells["label"] == a) & (cells["source"] == s))},
            "snapped_to_segmented_nucleus": float(np.mean(cells["snapped"])),
            "snapped_per_class": {str(a): float(np.mean(cells["snapped"][cells["label"] == a])) for a in labels},
        },
        "models": {},
    }
    text = []
    for name in args.model:
        net, spec = load(name)
        k = net.n_classes
        res = tt.evaluate_all(net, cells, k)
        res["per_source"] = per_source(net, cells, k)
        res["spec"] = {"name": spec.name, "k": k, "iterations": spec.training.get("iterations"),
                       "command": spec.training.get("command")}
        results["models"][f"{spec.name} (K={k})"] = res
        text.append(markdown(res, k))
        print(text[-1])
        print("per source:", {s: round(v["accuracy"], 3) for s, v in res["per_source"].items()})
    results["seconds"] = round(time.time() - t0, 1)
    tt.write_json(args.out, results)
    print(f"-> {args.out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
