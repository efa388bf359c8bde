"""Benchmark opening whole-slide images and reading a full-resolution region.

For every slide, each run happens in a FRESH Python subprocess (so module
imports, file caches inside the libraries and resident memory are honest):

a. ``open_slide(path)`` + building the napari layer object
   ``napari.layers.Image(data, **kwargs)`` from ``layer_data(slide)``
   (headless: no viewer, no Qt). The clock starts after ``napari``,
   ``napari_mitosis`` and the libraries the reader imports lazily (tifffile,
   zarr, imagecodecs, and distributed, which dask imports on its first
   compute) are imported; import time is reported separately.
   Resident memory (RSS, psutil) is taken before opening and after the layer
   is built.
b. reading a 2048 x 2048 region at full resolution from the middle of the
   slide with ``slide.read_region(0, x, y, 2048, 2048)`` (for a level stored
   in the file this slices tifffile's zarr store directly, ``Slide._direct``;
   otherwise it computes the level's dask array) against tifffile decoding exactly the same tiles
   directly (``fh.seek``/``fh.read`` of each tile, ``page.decode``, placed into
   an array), single-threaded and with a pool of 2 threads. Each is warmed up
   once, then the best of 5 runs is kept; the methods run in interleaved
   rounds so that a change in machine load affects them alike. Also timed:
   slicing the slide's level-0 dask array (``slide.levels[0][y:y+h, x:x+w]``,
   default threaded scheduler), which is what napari computes when it draws.
   As diagnostics the same region is read from tifffile's zarr store without
   dask, and through dask arrays whose chunks are 1 x 1, 2 x 2 and 4 x 4 file
   tiles.

Opening is measured twice, in separate fresh processes: *cold* (the slide's
layer is the first napari layer of the process, so napari's one-time set-up,
chiefly building its pint unit registry, is included) and *warm* (that set-up
was done on a 2 x 2 dummy layer before the clock). Region reads are timed in
the warm processes.

Prints markdown tables and writes ``benchmarks/results.json``.

Usage::

    .venv/bin/python benchmarks/bench_slide_open.py                  # generated + shared slides
    .venv/bin/python benchmarks/bench_slide_open.py --slides a.svs b.ome.tif --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
SHARED = ROOT.parent / "shared" / "data" / "slides"
REGION = 2048
REPEATS = 5
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".btf", ".zarr")


# ============================================================== worker process
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _best_interleaved(fns: dict, repeats: int) -> dict:
    """Best of ``repeats`` for each function, run in interleaved rounds (A B C D, A B C D, ...)
    after one warm-up each, so a change in machine load hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (min(v), v) for k, v in times.items()}


def _tile_indices(page, x: int, y: int, w: int, h: int):
    """Linear indices of the page's tiles (or strips) covering a region, and the grid origin."""
    cl, cw = page.chunks[0], page.chunks[1]
    across = -(-page.imagewidth // cw)
    ty0, ty1 = y // cl, (y + h - 1) // cl
    tx0, tx1 = x // cw, (x + w - 1) // cw
    idx = [ty * across + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
    return idx, (ty0 * cl, tx0 * cw), ((ty1 - ty0 + 1) * cl, (tx1 - tx0 + 1) * cw)


def _tifffile_reader(path: Path, x: int, y: int, w: int, h: int):
    """Closures decoding the region's tiles with tifffile directly: 1 thread and a pool of 2."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import tifffile

    tf = tifffile.TiffFile(path)
    page = tf.series[0].levels[0].pages[0]  # level-0 page (keyframe)
    fh = tf.filehandle
    idx, (oy, ox), (gh, gw) = _tile_indices(page, x, y, w, h)
    offsets, counts, tables = page.dataoffsets, page.databytecounts, page.jpegtables
    spp = page.samplesperpixel
    lock = threading.Lock()

    def place(out, seg, pos, shape):
        py, px = pos[2] - oy, pos[3] - ox
        seg = seg.reshape(shape[1], shape[2], -1)
        hh, ww = min(shape[1], gh - py), min(shape[2], gw - px)
        out[py : py + hh, px : px + ww] = seg[:hh, :ww, :3]

    def crop(out):
        return out[y - oy : y - oy + h, x - ox : x - ox + w]

    def read_serial():
        out = np.empty((gh, gw, min(spp, 3)), np.uint8)
        for i in idx:
            fh.seek(offsets[i])
            data = fh.read(counts[i])
            seg, pos, shape = page.decode(data, i, jpegtables=tables)
            place(out, seg, pos, shape)
        return crop(out)

    pool = ThreadPoolExecutor(2)

    def read_pool():
        out = np.empty((gh, gw, min(spp, 3)), np.uint8)

        def one(i):
            with lock:
                fh.seek(offsets[i])
                data = fh.read(counts[i])
            seg, pos, shape = page.decode(data, i, jpegtables=tables)
            place(out, seg, pos, shape)

        list(pool.map(one, idx))
        return crop(out)

    def close():
        pool.shutdown()
        tf.close()

    info = {
        "tiles": len(idx),
        "tile_shape": [int(page.chunks[0]), int(page.chunks[1])],
        "compression": str(page.compression.name if hasattr(page.compression, "name") else page.compression),
    }
    return read_serial, read_pool, close, info


def worker(path: Path, repeats: int, profile: str | None, mode: str = "cold") -> dict:
    """One fresh process. ``cold``: open + layer as the first layer of the process.
    ``warm``: napari's one-time lazy set-up (its pint unit registry, built on the first
    layer of a session) is done on a 2 x 2 dummy layer before the clock; then the
    region reads are timed too."""
    import warnings

    warnings.simplefilter("ignore")
    rss_start = _rss_mb()
    t = time.perf_counter()
    import dask
    import dask.array  # noqa: F401
    import imagecodecs  # noqa: F401
    import napari
    import napari.layers
    import numpy as np
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    try:  # dask imports it on the first compute() when it is installed: that is import time too
        import distributed  # noqa: F401
    except ImportError:
        pass

    import napari_mitosis
    import napari_mitosis.io._backends  # noqa: F401
    from napari_mitosis.io import open_slide
    from napari_mitosis.plugin.reader import layer_data

    import_s = time.perf_counter() - t
    qt_loaded = any(m.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6") for m in sys.modules)

    if mode == "warm":
        napari.layers.Image(np.zeros((2, 2, 3), np.uint8), rgb=True, scale=(0.25, 0.25), units=("micrometer", "micrometer"))

    # ---------------------------------------------------------- a. open + layer
    import gc

    gc.collect()
    rss_before = _rss_mb()
    prof = None
    if profile == "open":
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    slide = open_slide(path)
    t1 = time.perf_counter()
    data, kwargs, _ = layer_data(slide)
    layer = napari.layers.Image(data, **kwargs)
    t2 = time.perf_counter()
    if prof is not None:
        prof.disable()
    rss_after = _rss_mb()
    qt_loaded_after = any(m.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6") for m in sys.modules)
    res = {
        "path": str(path),
        "mode": mode,
        "file_mb": os.path.getsize(path) / 1e6 if path.is_file() else None,
        "shape": list(slide.shape),
        "levels": slide.level_count,
        "file_levels": slide.file_levels,
        "format": slide.format,
        "mpp": slide.mpp,
        "import_s": import_s,
        "open_s": t1 - t0,
        "layer_s": t2 - t1,
        "open_layer_s": t2 - t0,
        "rss_start_mb": rss_start,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_delta_mb": rss_after - rss_before,
        "qt_loaded": qt_loaded or qt_loaded_after,
        "layer_type": type(layer).__name__,
        "versions": {
            "python": platform.python_version(),
            "napari": napari.__version__,
            "napari_mitosis": getattr(napari_mitosis, "__version__", None),
            "tifffile": tifffile.__version__,
            "zarr": zarr.__version__,
            "dask": dask.__version__,
            "imagecodecs": imagecodecs.__version__,
            "numpy": np.__version__,
        },
    }
    if prof is not None:
        import io
        import pstats

        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(40)
        res["profile"] = s.getvalue()

    if mode == "cold":
        slide.close()
        return res

    # ------------------------------------------------------------- b. region
    H, W = slide.shape
    w, h = min(REGION, W), min(REGION, H)
    x, y = max(0, W // 2 - w // 2), max(0, H // 2 - h // 2)
    read_serial, read_pool, close, tinfo = _tifffile_reader(path, x, y, w, h)

    a = slide.read_region(0, x, y, w, h)
    b = read_serial()
    c = read_pool()
    identical = bool(np.array_equal(a, b) and np.array_equal(b, c))
    max_diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())

    if profile == "read":
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(repeats):
            slide.read_region(0, x, y, w, h)
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        res["profile_read"] = s.getvalue()

    def read_dask_level():  # what napari computes when it draws: the level's dask array
        return np.asarray(slide.levels[0][y : y + h, x : x + w].compute())

    direct_used = bool(slide._direct and slide._direct[0] is not None)
    identical = identical and bool(np.array_equal(read_dask_level(), b))

    best = _best_interleaved(
        {
            "read_region": lambda: slide.read_region(0, x, y, w, h),
            "dask_level": read_dask_level,
            "tifffile": read_serial,
            "tifffile_2threads": read_pool,
        },
        repeats,
    )
    (dask_s, dask_all), (dask_level_s, dask_level_all) = best["read_region"], best["dask_level"]
    (tif_s, tif_all), (tif2_s, tif2_all) = best["tifffile"], best["tifffile_2threads"]
    close()
    diag = _diagnostics(path, x, y, w, h, repeats)
    res.update(
        {
            "region": {"x": x, "y": y, "w": w, "h": h, **tinfo},
            "identical": identical,
            "max_abs_diff": max_diff,
            "read_region_s": dask_s,
            "dask_level_s": dask_level_s,
            "direct_read": direct_used,
            "dask_chunks": [int(c) for c in slide.levels[0].chunksize[:2]],
            "tifffile_s": tif_s,
            "tifffile_2threads_s": tif2_s,
            "ratio_vs_tifffile": dask_s / tif_s,
            "ratio_vs_tifffile_2threads": dask_s / tif2_s,
            "all_times": {
                "read_region": dask_all,
                "dask_level": dask_level_all,
                "tifffile": tif_all,
                "tifffile_2threads": tif2_all,
            },
            "diagnostics": diag,
            "rss_end_mb": _rss_mb(),
        }
    )
    slide.close()
    return res


def _diagnostics(path: Path, x: int, y: int, w: int, h: int, repeats: int) -> dict:
    """Where the read_region time goes: the same region through the same zarr store
    (tifffile's ``aszarr``) with no dask, and through dask with larger chunks."""
    import dask.array as da
    import tifffile
    import zarr

    out = {}
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        if series.levels[0].axes not in ("YXS", "YXC"):
            return out
        z = zarr.open(series.aszarr(level=0), mode="r")
        if not hasattr(z, "shape"):
            z = z["0"]
        fns = {"zarr_direct_s": lambda: z[y : y + h, x : x + w]}
        for k in (1, 2, 4):  # dask chunks of 1 x 1, 2 x 2 and 4 x 4 file tiles
            cy, cx = z.chunks[0] * k, z.chunks[1] * k
            a = da.from_zarr(z, chunks=(cy, cx, z.shape[2]), inline_array=True)
            fns[f"dask_tiles{k}x{k}_s"] = lambda a=a: a[y : y + h, x : x + w].compute()
        out = {k: v[0] for k, v in _best_interleaved(fns, repeats).items()}
    return out


# ============================================================== parent process
def default_slides() -> list[Path]:
    slides = sorted(DATA.glob("synthetic_*.ome.tif"), key=lambda p: (p.stem.endswith("1level.ome"), p.stat().st_size))
    if SHARED.is_dir():
        slides += sorted(p for p in SHARED.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
    return slides


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "nproc": os.cpu_count()}
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except Exception:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def run_fresh(path: Path, repeats: int, mode: str, profile: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(path), "--repeats", str(repeats), "--mode", mode]
    if profile:
        cmd += ["--profile", profile]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"worker failed for {path}:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(cold: list[dict], warm: list[dict]) -> dict:
    """Medians over runs for opening and memory; best over runs for the region reads."""
    first = warm[0]
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    best = lambda k: min(r[k] for r in warm)  # noqa: E731
    s = {k: first[k] for k in ("path", "file_mb", "shape", "levels", "file_levels", "format", "mpp", "region")}
    s["runs"] = len(warm)
    s["qt_loaded"] = any(r["qt_loaded"] for r in cold + warm)
    for k in ("import_s", "open_s", "layer_s", "open_layer_s", "rss_before_mb", "rss_after_mb", "rss_delta_mb"):
        s[k] = med(cold, k)
        s["warm_" + k] = med(warm, k)
    s["open_layer_s_max"] = max(r["open_layer_s"] for r in cold)
    s["rss_after_mb_max"] = max(r["rss_after_mb"] for r in cold + warm)
    s["direct_read"] = all(r["direct_read"] for r in warm)
    s["dask_chunks"] = first["dask_chunks"]
    for k in ("read_region_s", "dask_level_s", "tifffile_s", "tifffile_2threads_s"):
        s[k] = best(k)
    s["ratio_vs_tifffile"] = s["read_region_s"] / s["tifffile_s"]
    s["ratio_vs_tifffile_2threads"] = s["read_region_s"] / s["tifffile_2threads_s"]
    s["identical"] = all(r["identical"] for r in warm)
    keys = sorted({k for r in warm for k in r.get("diagnostics", {})})
    s["diagnostics"] = {k: min(r["diagnostics"][k] for r in warm if k in r.get("diagnostics", {})) for k in keys}
    return s


def tables(summary: list[dict]) -> str:
    out = [
        "### a. Open + build napari layer (fresh process each, imports excluded; median of runs)",
        "",
        "*cold*: the slide's layer is the first napari layer of the process; *warm*: napari's one-time",
        "set-up (its pint unit registry) was done on a 2 x 2 dummy layer first. RSS is of the cold process.",
        "",
        "| slide | size (px) | file (MB) | levels (in file) | cold: open_slide (s) | cold: Image layer (s) | **cold: total (s)** | warm: open_slide (s) | warm: Image layer (s) | **warm: total (s)** | RSS after (MB) | RSS delta (MB) | imports (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        h, w = s["shape"]
        out.append(
            f"| {Path(s['path']).name} | {w:,} x {h:,} | {s['file_mb']:.1f} | {s['levels']} ({s['file_levels']}) | "
            f"{s['open_s']:.3f} | {s['layer_s']:.3f} | **{s['open_layer_s']:.3f}** | "
            f"{s['warm_open_s']:.3f} | {s['warm_layer_s']:.3f} | **{s['warm_open_layer_s']:.3f}** | "
            f"{s['rss_after_mb']:.0f} | {s['rss_delta_mb']:+.1f} | {s['import_s']:.2f} |"
        )
    out += [
        "",
        "### b. Read the central full-resolution region (best of 5 after 1 warm-up, best over runs)",
        "",
        "| slide | region | tiles decoded | read_region (s) | tifffile 1 thread (s) | ratio | tifffile 2 threads (s) | ratio | read path | dask level slice (s) | dask chunk (px) | identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for s in summary:
        r = s["region"]
        out.append(
            f"| {Path(s['path']).name} | {r['w']} x {r['h']} | {r['tiles']} ({r['tile_shape'][0]} px, {r['compression']}) | "
            f"{s['read_region_s']:.3f} | {s['tifffile_s']:.3f} | **{s['ratio_vs_tifffile']:.2f}x** | "
            f"{s['tifffile_2threads_s']:.3f} | {s['ratio_vs_tifffile_2threads']:.2f}x | "
            f"{'direct (zarr)' if s['direct_read'] else 'dask'} | {s['dask_level_s']:.3f} | "
            f"{s['dask_chunks'][0]} x {s['dask_chunks'][1]} | {'yes' if s['identical'] else 'NO'} |"
        )
    out += [
        "",
        "### Diagnostics: the same region without dask, and with larger dask chunks (best of 5, best over runs)",
        "",
        "| slide | tifffile 1 thread (s) | zarr store, no dask (s) | dask over zarr, chunk = 1 tile (s) | chunk = 2 x 2 tiles (s) | chunk = 4 x 4 tiles (s) | read_region (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        d = s.get("diagnostics") or {}
        f = lambda k: f"{d[k]:.3f}" if k in d else "n/a"  # noqa: E731
        out.append(
            f"| {Path(s['path']).name} | {s['tifffile_s']:.3f} | {f('zarr_direct_s')} | {f('dask_tiles1x1_s')} | "
            f"{f('dask_tiles2x2_s')} | {f('dask_tiles4x4_s')} | {s['read_region_s']:.3f} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark slide opening and region reading.")
    ap.add_argument("--slides", type=Path, nargs="+", help="slides to benchmark (default: benchmarks/data + shared slides)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per slide, for each of cold and warm (default 3)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timed region reads per method (default 5)")
    ap.add_argument("--out", type=Path, default=HERE / "results.json", help="JSON results file")
    ap.add_argument("--profile", choices=("open", "read"), help="print a cProfile of one run per slide")
    ap.add_argument("--_worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("cold", "warm"), default="warm", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(worker(args._worker, args.repeats, args.profile, args.mode)))
        return 0

    slides = args.slides or default_slides()
    if not slides:
        print("no slides: run benchmarks/make_slides.py first or pass --slides", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    results = []
    for path in slides:
        cold = [run_fresh(path, args.repeats, "cold") for _ in range(args.runs)]
        warm = [run_fresh(path, args.repeats, "warm") for _ in range(args.runs)]
        s = summarise(cold, warm)
        results.append({"summary": s, "cold_runs": cold, "warm_runs": warm})
        print(
            f"{path.name}: open+layer {s['open_layer_s']:.3f} s cold, {s['warm_open_layer_s']:.3f} s warm, RSS {s['rss_after_mb']:.0f} MB "
            f"({s['rss_delta_mb']:+.1f}), read {s['read_region_s']:.3f} s vs tifffile {s['tifffile_s']:.3f} s "
            f"({s['ratio_vs_tifffile']:.2f}x)",
            flush=True,
        )
        if args.profile:
            for mode in ("cold", "warm") if args.profile == "open" else ("warm",):
                print(f"--- cProfile ({mode}) ---")
                print(run_fresh(path, args.repeats, mode, args.profile).get("profile" if args.profile == "open" else "profile_read"))
    md = tables([r["summary"] for r in results])
    print()
    print(md)
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {**machine(), "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg()},
        "versions": results[0]["warm_runs"][0]["versions"],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"region": REGION, "repeats": args.repeats, "runs": args.runs},
        "results": results,
        "markdown": md,
    }
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min; {os.cpu_count()} CPUs)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
