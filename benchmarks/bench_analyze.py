"""Throughput and memory of ``analyze`` (detection + counting) against plain tile decoding.

Three measurements, each written to ``benchmarks/analyze_results.json`` (merged):

``throughput SLIDE``
    Megapixels of slide per second for ``analyze`` (2 worker threads) and, in the
    same run, for just decoding every level-0 tile of the same slide with tifffile
    (2 threads): the ratio is the figure of merit (target: analyze >= 1/3 of decode).
    Decoding and analysis alternate (``--repeats`` analyses, each between two
    decodes; the first analysis also loads and traces the models) and the ratio
    is of the medians, because this machine's speed drifts by +-20% over minutes.

``memory``
    Peak resident memory of ``napari-mitosis analyze`` on generated slides of
    1 and 4 gigapixels (``--sizes``), each in a fresh process, against the memory
    of the process after loading the model: flat when memory is bounded by the
    tiles in flight. The 1 GP slide has tissue in a quarter of its 8192 px blocks,
    the 4 GP slide in a sixteenth (so both have ~0.27 GP of tissue to analyse, on
    2 CPU cores, and differ in slide size only: what must not matter).

``make-real``
    A large real-tissue slide: the 61 MITOS-ATYPIA-14 frames of ../shared/data,
    flipped/rotated and tiled into a 16 x 16 grid, written as a pyramidal
    JPEG OME-TIFF at their recorded pixel size (0.2455 um/px); 24624 x 22016 px.

Usage::

    python benchmarks/bench_analyze.py make-real
    python benchmarks/bench_analyze.py throughput benchmarks/data/real_mitos_grid.ome.tif
    python benchmarks/bench_analyze.py throughput benchmarks/data/synthetic_10k.ome.tif
    python benchmarks/bench_analyze.py memory --sizes 32768 65536
    python benchmarks/bench_analyze.py profile benchmarks/data/real_mitos_grid.ome.tif --tiles 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
SHARED = ROOT.parent / "shared" / "data"
RESULTS = HERE / "analyze_results.json"
sys.path.insert(0, str(HERE))


def _save(key, value):
    res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    res[key] = value
    RESULTS.write_text(json.dumps(res, indent=1, default=float))


def decode_rate(path, threads: int = 2) -> dict:
    """Decode every level-0 tile with tifffile (``threads`` threads); megapixels per second."""
    import tifffile

    t0 = time.perf_counter()
    n = 0
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].pages[0]
        h, w = page.shape[:2]
        for _seg, _idx, _shape in page.segments(maxworkers=threads):
            n += 1
    dt = time.perf_counter() - t0
    return {"tiles": n, "seconds": dt, "megapixels": h * w / 1e6, "mp_per_s": h * w / 1e6 / dt}


def cmd_throughput(args):
    import torch

    from napari_mitosis.io import open_slide
    from napari_mitosis.pipeline.analyze import analyze_task
    from napari_mitosis.pipeline.detect import make_params
    from napari_mitosis.pipeline.progress import run

    torch.set_num_threads(1)
    path = Path(args.slide)
    with open_slide(path) as s:
        shape = s.shape
    params = make_params(device="cpu", torch_threads=1)
    mp = shape[0] * shape[1] / 1e6
    # decode and analyze alternately (this machine's speed drifts): decode, analyze, decode, ...
    decodes, analyses = [], []
    for _ in range(args.repeats):
        decodes.append(decode_rate(path, args.workers))
        print(f"decode: {decodes[-1]['mp_per_s']:.1f} MP/s ({decodes[-1]['seconds']:.1f} s)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = run(analyze_task([path], tmp, workers=args.workers, params=params))
            analyses.append(time.perf_counter() - t0)
            det_json = json.loads((Path(summary.out[0]) / "summary.json").read_text())
        print(f"analyze: {mp / analyses[-1]:.1f} MP/s ({analyses[-1]:.1f} s)", flush=True)
    decodes.append(decode_rate(path, args.workers))
    dec_rate = float(np.median([d["mp_per_s"] for d in decodes]))
    an_rate = float(np.median([mp / t for t in analyses]))
    res = {"slide": path.name, "shape": list(shape), "megapixels": mp, "workers": args.workers,
           "cpu_count": os.cpu_count(), "load_avg_1min_at_end": os.getloadavg()[0],
           "decode_runs": decodes, "analyze_seconds_runs": analyses,
           "decode_mp_per_s_median": dec_rate, "analyze_mp_per_s_median": an_rate,
           "ratio_analyze_to_decode": an_rate / dec_rate,
           "ratio_worst_case": mp / max(analyses) / max(d["mp_per_s"] for d in decodes),
           "note": "ratio: median analyze rate / median decode rate, runs alternated; worst case: the slowest "
                   "analyze against the fastest decode",
           "summary": det_json}
    print(json.dumps({k: v for k, v in res.items() if k not in ("summary", "decode_runs")}, indent=1, default=float))
    _save(f"throughput/{path.name}", res)


def _gp_slide(size: int, tissue_fraction: float) -> Path:
    from make_slides import BLOCK, make_render, render_pool

    from napari_mitosis.io.pyramid_writer import write_pyramid

    path = DATA / f"analyze_{size}_{int(tissue_fraction * 100)}pct.ome.tif"
    if path.exists():
        return path
    pool = render_pool(8)
    full = make_render(pool, size)
    big = 8192

    def render(y0, rows):
        out = full(y0, rows)
        if tissue_fraction >= 1:
            return out
        k = int(round(1 / tissue_fraction))
        for bx in range(-(-size // big)):
            by = y0 // big
            keep = ((bx + 3 * by) % k) == 0  # 1 in k of the 8192 px blocks is tissue
            if not keep:
                out[:, bx * big : (bx + 1) * big] = 243
        return out

    t0 = time.perf_counter()
    write_pyramid(path, (size, size), render, mpp=0.25, tile=256, compression="jpeg", quality=90)
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    assert BLOCK == 1024
    return path


_CHILD = r"""
import json, resource, sys, threading, time
import torch
torch.set_num_threads(1)
from napari_mitosis.pipeline.analyze import analyze_task
from napari_mitosis.pipeline.detect import make_params, load_classifier
from napari_mitosis.pipeline.progress import run

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

load_classifier("cell-gstn", "cpu")
base = rss_mb()
peak = [base]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
summary = run(analyze_task([sys.argv[1]], sys.argv[2], workers=2, params=make_params(device="cpu", torch_threads=1)))
stop.set()
print(json.dumps({"rss_after_model_load_mb": base, "peak_rss_mb": max(peak[0], rss_mb()),
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t, "summary": summary.iloc[0].to_dict()}, default=str))
"""


def cmd_memory(args):
    out = {}
    for size in args.sizes:
        frac = 0.25 if size <= 40000 else 0.0625
        path = _gp_slide(size, frac)
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, "-c", _CHILD, str(path), tmp], check=False, capture_output=True, text=True)
        if p.returncode:
            print(p.stderr[-3000:])
            raise SystemExit(p.returncode)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r.update(gigapixels=size * size / 1e9, tissue_fraction=frac, slide=path.name)
        print(json.dumps({k: v for k, v in r.items() if k != "summary"}, default=float), flush=True)
        out[str(size)] = r
        _save("memory", out)


def cmd_make_real(args):
    from skimage.io import imread

    from napari_mitosis.io.pyramid_writer import write_pyramid

    frames = sorted((SHARED / "mitosis" / "mitos_atypia14" / "frames").glob("*.jpg"))
    if not frames:
        raise SystemExit(f"{SHARED}: MITOS-ATYPIA-14 frames not found")
    imgs = [imread(f)[..., :3] for f in frames]
    fh, fw = min(i.shape[0] for i in imgs), min(i.shape[1] for i in imgs)
    imgs = [i[:fh, :fw] for i in imgs]
    n = args.grid
    H, W = n * fh, n * fw
    path = DATA / "real_mitos_grid.ome.tif"

    def frame_at(r, c):
        k = (r * n + c) * 7919 % len(imgs)
        v = imgs[k]
        if (r + c) % 2:
            v = v[::-1]
        if (r // 2 + c) % 3 == 1:
            v = v[:, ::-1]
        return v

    def render(y0, rows):
        out = np.empty((rows, W, 3), np.uint8)
        y = y0
        while y < y0 + rows:
            r, py = divmod(y, fh)
            k = min(fh - py, y0 + rows - y)
            for c in range(n):
                out[y - y0 : y - y0 + k, c * fw : (c + 1) * fw] = frame_at(r, c)[py : py + k]
            y += k
        return out

    t0 = time.perf_counter()
    write_pyramid(path, (H, W), render, mpp=0.2455, tile=256, compression="jpeg", quality=90)
    print(f"wrote {path}: {W} x {H} px ({H * W / 1e6:.0f} MP) in {time.perf_counter() - t0:.0f} s")


#: the steps of a tile, as the functions that do them (cumulative time of each)
PROFILE_STEPS = {
    "screening level read": "tile_candidates>read_region",
    "optical density + background test": "optical_density",
    "screening features": "blob_features",
    "first pass (cell-screen)": "first_pass",
    "cell-gstn, crops and network": "classify_points",
    "  of which the level-0 crops": "_crops",
}


def cmd_profile_dense(args):
    """One thread, the first ``--tiles`` tissue tiles, the default two-stage detector: the time of
    each stage per tile against decoding the same tiles' level-0 pixels (the figure of merit is
    decode time / detection time, as in ``throughput``)."""
    import torch

    from napari_mitosis.core.decision import needs_classifier, needs_more_views
    from napari_mitosis.io import open_slide
    from napari_mitosis.models.dense_net import dense_candidates, dense_probabilities
    from napari_mitosis.pipeline.detect import (
        DENSE_HALO_UM,
        _crops,
        detect_tile,
        dihedral,
        load_models,
        make_params,
        plan_tiles,
        read_screening,
    )

    torch.set_num_threads(1)
    slide = open_slide(args.slide)
    params = make_params(device="cpu", model_folder=args.models, dense_folder=args.models)
    (cls, cspec), (dense, dspec) = load_models(params)
    stride = int(dspec.config.get("out_stride", 4))
    tiles = plan_tiles(slide)[: args.tiles]
    detect_tile(slide, *tiles[0], params, slide.mpp)  # models loaded, caches warm
    cost = dict(read=0.0, dense=0.0, peaks=0.0, crops=0.0, classify=0.0, decode=0.0)
    n_cand = n_cls = n_views = 0
    for t in tiles:
        t0 = time.perf_counter()
        rgb, ox, oy, ds, m = read_screening(slide, *t, slide.mpp, float(dspec.mpp), DENSE_HALO_UM)
        t1 = time.perf_counter()
        prob = dense_probabilities(dense, rgb, stride)
        t2 = time.perf_counter()
        xy, vals = dense_candidates(prob, [params.thr("detect_candidate_mitotic_figure"),
                                           params.thr("detect_candidate_granulocyte")], merge_px=4.0 / m, stride=stride)
        need = needs_classifier(vals, params)
        xy0 = np.column_stack([ox + (xy[need, 0] + 0.5) * ds - 0.5, oy + (xy[need, 1] + 0.5) * ds - 0.5])
        t3 = time.perf_counter()
        inputs, _, _ = _crops(slide, xy0, slide.mpp, int(cspec.patch_size), float(cspec.mpp))
        t4 = time.perf_counter()
        with torch.no_grad():
            probs = np.concatenate([torch.softmax(cls(torch.from_numpy(np.ascontiguousarray(inputs[i : i + 64]))
                                                      .permute(0, 3, 1, 2)), 1).numpy()
                                    for i in range(0, len(inputs), 64)] or [np.zeros((0, 3), np.float32)])
            more = np.flatnonzero(needs_more_views(vals[need], probs, list(cspec.classes), params, params.views)) \
                if params.views > 1 else np.zeros(0, int)
            for i in range(0, len(more), 64):  # the card's other test-time views, where they can change a detection
                x = torch.from_numpy(np.ascontiguousarray(inputs[more[i : i + 64]])).permute(0, 3, 1, 2)
                for k in range(1, params.views):
                    cls(dihedral(x, k))
        t5 = time.perf_counter()
        slide.read_region(0, *t)
        t6 = time.perf_counter()
        for k, v in zip(cost, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            cost[k] += v
        n_cand, n_cls, n_views = n_cand + len(xy), n_cls + int(need.sum()), n_views + len(more)
    n = len(tiles)
    detect = sum(v for k, v in cost.items() if k != "decode")
    out = {"slide": Path(args.slide).name, "tiles": n, "tile_um": params.tile_um, "views": params.views,
           "ms_per_tile": {k: round(1000 * v / n, 1) for k, v in cost.items()},
           "candidates_per_tile": n_cand / n, "classified_per_tile": n_cls / n, "more_views_per_tile": n_views / n,
           "decode_over_detect": cost["decode"] / detect}
    print(json.dumps(out, indent=1))
    _save("profile_dense", out)


def cmd_profile(args):
    """One thread, the first ``--tiles`` tissue tiles: where a tile's time goes, and how many
    blobs reach each stage."""
    import cProfile
    import pstats

    import torch

    from napari_mitosis.io import open_slide
    from napari_mitosis.pipeline.detect import (
        detect_tile,
        make_params,
        plan_tiles,
        tile_candidates,
    )

    torch.set_num_threads(1)
    slide = open_slide(args.slide)
    params = make_params(device="cpu")
    tiles = plan_tiles(slide)[: args.tiles]
    detect_tile(slide, *tiles[0], params, slide.mpp)  # models loaded, caches warm
    blobs = screened = 0
    for t in tiles:
        c, n, _ = tile_candidates(slide, *t, slide.mpp, params)
        blobs, screened = blobs + n, screened + len(c)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    to_gstn = sum(detect_tile(slide, *t, params, slide.mpp)["screened"] for t in tiles)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    cum = {}
    for (_file, _line, name), (_cc, _nc, _tt, ct, callers) in stats.items():
        for step, key in PROFILE_STEPS.items():
            parent, _, fn = key.rpartition(">")
            if name != fn:
                continue
            # with a parent: only the time of the calls made from it
            t = sum(v[3] for (_f, _l, n), v in callers.items() if n == parent) if parent else ct
            cum[step] = cum.get(step, 0.0) + t
    mp = sum(t[2] * t[3] for t in tiles) / 1e6
    res = {"slide": Path(args.slide).name, "tiles": len(tiles), "megapixels": mp, "seconds": total,
           "mp_per_s_one_thread": mp / total, "blobs": blobs, "screened": screened, "to_cell_gstn": to_gstn,
           "steps_seconds": cum, "note": "cProfile on (adds overhead); the first pass includes cutting its patches"}
    print(json.dumps(res, indent=1, default=float))
    _save(f"profile/{Path(args.slide).name}", res)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("slide")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--repeats", type=int, default=3, help="analyze runs, each after a decode run")
    t.set_defaults(func=cmd_throughput)
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=int, nargs="+", default=[32768, 65536])
    m.set_defaults(func=cmd_memory)
    pd_ = sub.add_parser("profile-dense")
    pd_.add_argument("slide")
    pd_.add_argument("--tiles", type=int, default=12)
    pd_.add_argument("--models", default=None, help="a folder of model files to profile instead of the shipped ones")
    pd_.set_defaults(func=cmd_profile_dense)
    pr = sub.add_parser("profile")
    pr.add_argument("slide")
    pr.add_argument("--tiles", type=int, default=24)
    pr.set_defaults(func=cmd_profile)
    r = sub.add_parser("make-real")
    r.add_argument("--grid", type=int, default=16)
    r.set_defaults(func=cmd_make_real)
    a = ap.parse_args()
    a.func(a)
