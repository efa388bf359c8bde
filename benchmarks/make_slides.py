"""Generate the synthetic whole-slide images used by the slide-opening benchmarks.

Writes JPEG-compressed (quality 90), 256 px tiled, pyramidal OME-TIFFs at
0.25 um/px into ``benchmarks/data/``:

- ``synthetic_10k.ome.tif``  (10,000 x 10,000 px, 0.1 gigapixel)
- ``synthetic_50k.ome.tif``  (50,000 x 50,000 px, 2.5 gigapixels)

Rendering 2.5 gigapixels of procedural tissue would take far too long
(~3 Mpx/s), so a pool of distinct 1024 x 1024 synthetic H&E patches is
rendered once with :class:`~napari_mitosis.core.synthetic.SyntheticHE`
(``tissue="full"``) and the slide is tiled from them: each 1024 px block picks
a patch and one of 8 flips/rotations by a hash of its block coordinates. The
JPEG tiles therefore hold realistic H&E content (similar compressed size and
decode cost to a real scan), only repeated.

With ``--single-level`` it also writes ``synthetic_10k_1level.ome.tif``: the
same 10,000 x 10,000 px image without reduced levels (a tiled TIFF with no
pyramid, as some exports are), to show what opening costs when the pyramid has
to be computed.

Files that already exist are skipped. Usage::

    .venv/bin/python benchmarks/make_slides.py            # both sizes
    .venv/bin/python benchmarks/make_slides.py --sizes 10000
    .venv/bin/python benchmarks/make_slides.py --single-level
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BLOCK = 1024
MPP = 0.25
TILE = 256
QUALITY = 90


def slide_path(size: int, folder: Path = DATA, single_level: bool = False) -> Path:
    return folder / f"synthetic_{size // 1000}k{'_1level' if single_level else ''}.ome.tif"


def render_pool(n: int, seed0: int = 100) -> list[np.ndarray]:
    """``n`` distinct 1024 x 1024 RGB patches of full tissue."""
    from napari_mitosis.core.synthetic import SyntheticHE

    return [SyntheticHE(shape=(BLOCK, BLOCK), seed=seed0 + k, tissue="full").render(0, 0, BLOCK, BLOCK)[0] for k in range(n)]


def _block_hash(by: int, bx: int) -> int:
    """A well-mixed non-negative integer from block coordinates (splitmix-style)."""
    h = (by * 0x9E3779B1 + bx * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def make_render(pool: list[np.ndarray], width: int):
    """``render(y0, rows) -> (rows, width, 3) uint8`` tiling the patch pool."""
    variants = []  # 8 dihedral variants of each patch, as views (no extra memory)
    for p in pool:
        for k in range(4):
            r = np.rot90(p, k)
            variants.extend((r, r[:, ::-1]))
    nblocks_x = -(-width // BLOCK)

    def render(y0: int, rows: int) -> np.ndarray:
        out = np.empty((rows, width, 3), np.uint8)
        y = y0
        while y < y0 + rows:  # a stripe may straddle two block rows
            by, py = divmod(y, BLOCK)
            n = min(BLOCK - py, y0 + rows - y)
            for bx in range(nblocks_x):
                v = variants[_block_hash(by, bx) % len(variants)]
                x0 = bx * BLOCK
                x1 = min(x0 + BLOCK, width)
                out[y - y0 : y - y0 + n, x0:x1] = v[py : py + n, : x1 - x0]
            y += n
        return out

    return render


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="side lengths in px")
    ap.add_argument("--out", type=Path, default=DATA, help="output folder (default benchmarks/data)")
    ap.add_argument("--pool", type=int, default=16, help="number of distinct 1024 px patches")
    ap.add_argument(
        "--single-level", action="store_true", help="also write a 10,000 px slide without reduced levels (no pyramid)"
    )
    args = ap.parse_args(argv)

    from napari_mitosis.io.pyramid_writer import write_pyramid

    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [(s, False) for s in args.sizes] + ([(10_000, True)] if args.single_level else [])
    todo = []
    for s, single in wanted:
        p = slide_path(s, args.out, single)
        if p.exists():
            print(f"{p}: exists ({p.stat().st_size / 1e6:.1f} MB), skipped")
        else:
            todo.append((s, single))
    if not todo:
        return 0

    t = time.perf_counter()
    pool = render_pool(args.pool)
    print(f"rendered {len(pool)} patches of {BLOCK} x {BLOCK} px in {time.perf_counter() - t:.1f} s", flush=True)

    for size, single in todo:
        path = slide_path(size, args.out, single)
        last = [0.0]
        t0 = time.perf_counter()

        def progress(done, total, t0=t0, last=last):
            now = time.perf_counter()
            if now - last[0] > 30 or done == total:
                last[0] = now
                print(f"  {path.name}: {done}/{total} stripes, {now - t0:.0f} s", flush=True)

        write_pyramid(
            path,
            (size, size),
            make_render(pool, size),
            mpp=MPP,
            tile=TILE,
            compression="jpeg",
            quality=QUALITY,
            ome=True,
            smallest=2 * size if single else 1024,  # no reduced levels at all
            progress=progress,
        )
        dt = time.perf_counter() - t0
        mb = path.stat().st_size / 1e6
        print(
            f"{path}: {size} x {size} px{' (single level)' if single else ''} written in {dt:.1f} s "
            f"({size * size / dt / 1e6:.1f} Mpx/s), {mb:.1f} MB "
            f"({mb * 8e6 / (size * size):.2f} bit/px)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
