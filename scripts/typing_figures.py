"""Figures of the nucleus typer for docs/typing.md (the paper's Fig. 7 and Fig. 8).

- ``docs/images/typing_generated_k{K}.png``: G(z, c), rows: 8 noise vectors z
  (the same along a row), columns: the K codes c.
- ``docs/images/typing_real_k{K}.png``: real nuclei per type, rows: types
  (D_Q's argmax), 12 nuclei each, drawn at random from the labelled evaluation
  cells and the unlabelled pool of ../shared/data (the types of the row are
  written on the left, with their share of the pool).

    .venv/bin/python scripts/typing_figures.py [--model nuclei-infogan results/typing/k4/nuclei-infogan-k4.pt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_mitosis.training import train_nucleus_types as tt
from napari_mitosis.models.registry import WEIGHTS_DIR, load_model
from napari_mitosis.pipeline.nucleus_types import type_colors

SCALE = 2  # pixel replication: 40 px nuclei shown at 80 px


def load(name):
    p = Path(name)
    if p.suffix == ".pt":
        return load_model(p.stem, device="cpu", folder=p.parent)
    return load_model(name, device="cpu", folder=WEIGHTS_DIR)


def to_uint8(x):
    return np.clip((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5, 0, 255).astype(np.uint8)


def grid(rows, pad=4, bg=255, label_colors=None, band=10):
    """rows: list of lists of (h, w, 3) uint8 tiles -> one image (optional colour band left of each row)."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    left = band + pad if label_colors is not None else 0
    out = np.full((len(rows) * (h + pad) + pad, left + ncol * (w + pad) + pad, 3), bg, np.uint8)
    for i, r in enumerate(rows):
        y = pad + i * (h + pad)
        if label_colors is not None:
            out[y : y + h, pad : pad + band] = (np.asarray(label_colors[i][:3]) * 255).astype(np.uint8)
        for j, t in enumerate(r):
            x = left + pad + j * (w + pad)
            out[y : y + h, x : x + w] = t
    return out


def generated(net, n_rows: int = 8, seed: int = 0):
    import torch

    k = net.n_classes
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_rows, net.n_noise, generator=g)
    rows = []
    with torch.no_grad():
        for i in range(n_rows):
            zz = z[i : i + 1].repeat(k, 1)
            c = torch.eye(k)
            imgs = to_uint8(net.generate(zz, c))
            rows.append([np.kron(im, np.ones((SCALE, SCALE, 1), np.uint8)) for im in imgs])
    body = grid(rows)
    # a band above each column in the type's colour
    band = np.full((10, body.shape[1], 3), 255, np.uint8)
    for j, c in enumerate(type_colors(k)):
        x = 4 + j * (40 * SCALE + 4)
        band[4:, x : x + 40 * SCALE] = (np.asarray(c[:3]) * 255).astype(np.uint8)
    return np.concatenate([band, body])


def real(net, pool, cells, per_type: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    sample = np.concatenate([pool[rng.choice(len(pool), min(4000, len(pool)), replace=False)], cells["patches"]])
    types, _ = tt.infogan_types(net, sample)
    centre = tt.centre(sample)
    rows, share = [], []
    for t in range(net.n_classes):
        idx = np.flatnonzero(types == t)
        share.append(len(idx) / len(types))
        pick = rng.choice(idx, min(per_type, len(idx)), replace=False) if len(idx) else []
        row = [np.kron(centre[i], np.ones((SCALE, SCALE, 1), np.uint8)) for i in pick]
        rows.append(row or [np.full((40 * SCALE, 40 * SCALE, 3), 255, np.uint8)])
    return grid(rows, label_colors=type_colors(net.n_classes), band=12), share


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["nuclei-infogan"])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    args = ap.parse_args(argv)
    import torch
    from skimage.io import imsave

    torch.set_num_threads(1)
    pool, cells, _ = tt.cached_shared(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.model:
        net, spec = load(name)
        k = net.n_classes
        imsave(out / f"typing_generated_k{k}.png", generated(net), check_contrast=False)
        img, share = real(net, pool, cells)
        imsave(out / f"typing_real_k{k}.png", img, check_contrast=False)
        print(f"{spec.name} K={k}: figures -> {out}; share of nuclei per type: " + ", ".join(f"{100 * s:.0f}%" for s in share))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
