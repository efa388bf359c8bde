"""analyze: outputs per slide, summary across slides, dask local vs distributed, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_mitosis.core.synthetic import SyntheticHE
from napari_mitosis.io.detections import read_csv, read_geojson
from napari_mitosis.io.pyramid_writer import write_pyramid, write_synthetic_slide
from napari_mitosis.pipeline.analyze import LocalRunner, analyze_task, detect_slide_task
from napari_mitosis.pipeline.detect import make_params
from napari_mitosis.pipeline.progress import run

#: small tiles so that the little test slides have several
TILE_UM = 140


@pytest.fixture(scope="module")
def params():
    # the card's thresholds were chosen on real images; synthetic mitoses need a looser screen
    return make_params(device="cpu", tile_um=TILE_UM, candidates="nuclei",
                       thresholds={"detect_screen_dark": 1.2, "detect_mitotic_figure": 0.55})


def test_analyze_writes_per_slide_results_and_a_summary(tmp_path, synthetic_slide_file, params):
    summary = run(analyze_task([synthetic_slide_file], tmp_path, params=params))
    row = summary.iloc[0]
    folder = tmp_path / "synthetic"
    assert row.status == "ok" and row.out == str(folder)
    det = read_csv(folder / "detections.csv")
    assert det.attrs["mpp"] == 0.25 and set(det["class"]) <= {"mitotic_figure", "granulocyte"}
    geo = read_geojson(folder / "detections.geojson")
    assert np.allclose(geo[["x", "y"]], det[["x", "y"]], atol=1e-3)
    raw = json.loads((folder / "detections.geojson").read_text())
    if raw["features"]:
        props = raw["features"][0]["properties"]
        assert props["objectType"] in ("annotation", "detection") and props["classification"]["name"]
    counts = pd.read_csv(folder / "counts.csv").set_index("class")
    n_mit = int((det["class"] == "mitotic_figure").sum())
    assert counts.loc["mitotic_figure", "count"] == n_mit == row.mitotic_figures
    area = counts.loc["mitotic_figure", "tissue_mm2"]
    assert 0.05 < area < 1700 * 1100 * 0.25**2 / 1e6 + 1e-6
    assert counts.loc["mitotic_figure", "per_2.37mm2"] == pytest.approx(n_mit * 2.37 / area, rel=1e-4)
    assert {"hotspot_x", "hotspot_y", "hotspot_count"} <= set(counts.columns)
    assert (folder / "overview.png").stat().st_size > 1000
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 1


def test_local_cluster_gives_identical_results(tmp_path, synthetic_slide_file, params):
    distributed = pytest.importorskip("distributed")
    local = run(detect_slide_task(synthetic_slide_file, runner=LocalRunner(workers=1), params=params,
                                  roi=(0, 0, 1700, 600)))
    threads = run(detect_slide_task(synthetic_slide_file, runner=LocalRunner(workers=2), params=params,
                                    roi=(0, 0, 1700, 600)))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        from napari_mitosis.pipeline.analyze import DistributedRunner

        dist = run(detect_slide_task(synthetic_slide_file, runner=DistributedRunner(client), params=params,
                                     roi=(0, 0, 1700, 600)))
        assert len(client.scheduler_info()["workers"]) == 2
    assert local.attrs["tiles"] >= 4 and len(local) >= 1
    for other in (threads, dist):
        assert list(other["class"]) == list(local["class"])
        assert np.allclose(other[["x", "y", "score"]].to_numpy(float), local[["x", "y", "score"]].to_numpy(float), atol=1e-4)


def test_a_worker_killed_mid_run_is_replaced_and_no_tile_or_slide_goes_missing(tmp_path, synthetic_slide_file, params):
    """A real worker process is SIGKILLed while it holds tiles: the scheduler reruns them elsewhere,
    both slides are in the summary, complete, with the detections of an undisturbed run."""
    import os
    import signal
    import time

    distributed = pytest.importorskip("distributed")
    roi = (0, 0, 1700, 600)
    local = run(detect_slide_task(synthetic_slide_file, runner=LocalRunner(workers=1), params=params, roi=roi))
    second = tmp_path / "second.ome.tif"
    second.symlink_to(synthetic_slide_file)
    killed = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        task = analyze_task([synthetic_slide_file, second], tmp_path / "out", roi=roi, client=client, params=params)
        try:
            while True:
                p = next(task)
                if not killed and p.partial is not None:  # tiles are running: kill a worker that holds some
                    for _ in range(200):
                        busy = [w for w, keys in client.processing().items() if keys and w in pids]
                        if busy:
                            break
                        time.sleep(0.01)
                    assert busy, "no worker held a tile to kill"
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
        except StopIteration as stop:
            summary = stop.value
        new_pids = client.run(os.getpid)
    assert killed and set(new_pids.values()) != set(pids.values())  # one worker really died and was replaced
    assert list(summary.status) == ["ok", "ok"]  # both slides, complete (not partial)
    for name in ("synthetic", "second"):
        det = read_csv(tmp_path / "out" / name / "detections.csv")
        assert list(det["class"]) == list(local["class"])
        assert np.allclose(det[["x", "y", "score"]].to_numpy(float), local[["x", "y", "score"]].to_numpy(float), atol=1e-4)


def test_slide_without_tissue_gives_empty_results_said_plainly(tmp_path, params):
    path = tmp_path / "glass.ome.tif"
    write_pyramid(path, (768, 1024), lambda y0, rows: np.full((rows, 1024, 3), 242, np.uint8), mpp=0.25, tile=256)
    summary = run(analyze_task([path], tmp_path / "out", params=params))
    row = summary.iloc[0]
    assert row.status == "no tissue" and "no tissue" in row.message
    assert len(read_csv(tmp_path / "out" / "glass" / "detections.csv")) == 0
    assert row.mitotic_figures == 0


def test_no_pixel_size_is_an_error_row_and_other_slides_still_run(tmp_path, synthetic_slide_file, params):
    from skimage.io import imsave

    png = tmp_path / "field.png"
    imsave(png, np.full((256, 256, 3), 180, np.uint8), check_contrast=False)
    summary = run(analyze_task([png, synthetic_slide_file], tmp_path / "out", params=params, roi=(0, 0, 600, 600)))
    assert list(summary.status) == ["error", "ok"]
    assert "--mpp" in summary.message[0]
    assert pd.read_csv(tmp_path / "out" / "summary.csv").shape[0] == 2


def test_a_corrupt_tile_is_reported_and_the_rest_analysed(tmp_path, params):
    path = tmp_path / "corrupt.ome.tif"
    write_synthetic_slide(path, SyntheticHE(shape=(1024, 2048), seed=7, tissue="full"), tile=256)
    with tifffile.TiffFile(path) as tif:  # level 1 is what candidates are screened on
        page = tif.series[0].levels[1].pages[0]
        off, n = page.dataoffsets[3], page.databytecounts[3]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\0" * n)
    summary = run(analyze_task([path], tmp_path / "out", params=params))
    row = summary.iloc[0]
    assert row.status == "partial" and row.failed_tiles >= 1 and "PARTIAL" in row.message
    failed = pd.read_csv(tmp_path / "out" / "corrupt" / "failed_tiles.csv")
    assert len(failed) == row.failed_tiles and failed.error.str.contains("decode").all()
    assert row.tiles > row.failed_tiles  # the others ran
    counts = pd.read_csv(tmp_path / "out" / "corrupt" / "counts.csv")
    assert (counts.status == "partial").all()


def test_overview_png_draws_mitoses_red_granulocytes_orange_and_the_hotspot_blue(tmp_path):
    import dask.array as da
    from PIL import Image

    from napari_mitosis.core.counting import Hotspot
    from napari_mitosis.io.slide import Slide
    from napari_mitosis.pipeline.analyze import write_overview

    img = np.full((400, 800, 3), 240, np.uint8)
    slide = Slide(path=tmp_path / "s.png", levels=[da.from_array(img, chunks=(400, 800, 3))], mpp=1.0, format="image")
    det = pd.DataFrame({"x": [200.0, 600.0], "y": [200.0, 200.0], "class": ["mitotic_figure", "granulocyte"]})
    hotspot = Hotspot(x=100.0, y=50.0, width=300.0, height=225.0, count=1, tissue_mm2=0.0675)
    out = write_overview(tmp_path / "overview.png", slide, None, det, hotspot, size=400)
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape == (200, 400, 3)  # the longer side at `size`
    colours = {tuple(int(v) for v in p) for p in png.reshape(-1, 3)}
    assert {(220, 0, 0), (255, 140, 0), (30, 90, 255), (240, 240, 240)} <= colours
    assert tuple(png[25 + 1, 100]) == (30, 90, 255)  # the hotspot's top edge, at level-0 (100, 50) / 2


def test_local_threads_give_torch_and_opencv_their_thread_counts_back(tmp_path, synthetic_slide_file, params):
    """Tiles on two threads use one torch and one OpenCV thread each; the process's own settings
    (a napari session's, say) are back afterwards."""
    from dataclasses import replace

    import cv2
    import torch

    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(2)
    cv2.setNumThreads(3)
    try:
        run(detect_slide_task(synthetic_slide_file, runner=LocalRunner(workers=2), roi=(0, 0, 1700, 600),
                              params=replace(params, torch_threads=1)))  # as analyze_task makes them for 2 workers
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 3)
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
