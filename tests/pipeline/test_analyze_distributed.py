"""Issue 18.3: a run on a dask cluster (other processes) equals the local run -- tissue mask,
area, counts, detections -- and a cluster without workers stops with a message, not a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from napari_mitosis.io.detections import read_csv
from napari_mitosis.pipeline.analyze import ClusterError, DistributedRunner, analyze_task
from napari_mitosis.pipeline.detect import make_params
from napari_mitosis.pipeline.progress import run

distributed = pytest.importorskip("distributed")

COMPARED = ["status", "tissue_mm2", "mitotic_figures", "mitotic_per_2.37mm2", "hotspot_mitotic", "granulocytes",
            "tiles", "failed_tiles"]


@pytest.fixture(scope="module")
def params():
    # one torch thread in every tile, here as in the workers: the same float rounding, so a score at
    # a threshold cannot fall on either side of it depending on where the tile ran
    return make_params(device="cpu", tile_um=140, candidates="nuclei", torch_threads=1,
                       thresholds={"detect_screen_dark": 1.2, "detect_mitotic_figure": 0.55})


@pytest.fixture(scope="module")
def one_level_slide(tmp_path_factory, synth):
    """A single-level tiled JPEG TIFF (as CMU-1-Small-Region.svs): its coarser levels, the tissue
    mask's among them, are lazily computed dask arrays -- what a default Client would get."""
    import tifffile

    path = tmp_path_factory.mktemp("one_level") / "synthetic.tif"
    img = synth.render(0, 0, 1000, 2200)[0]
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, one_level_slide, params):
    from napari_mitosis.io import open_slide

    with open_slide(one_level_slide) as slide:
        assert slide.file_levels == 1 and slide.level_count > 1 and slide.mpp == pytest.approx(0.25)
    out = tmp_path_factory.mktemp("local")
    return out, run(analyze_task([one_level_slide], out, params=params))


def _same_as_local(local_run, out, summary):
    lout, local = local_run
    assert local.status[0] == "ok" and local.tissue_mm2[0] > 0
    assert summary.status[0] == "ok", summary.message[0]
    for col in COMPARED:
        a, b = summary[col][0], local[col][0]
        assert a == pytest.approx(b, rel=1e-9) if isinstance(b, float) else a == b, col
    assert "PARTIAL" not in summary.message[0]
    assert not (out / "synthetic" / "failed_tiles.csv").exists()
    det, ldet = read_csv(out / "synthetic" / "detections.csv"), read_csv(lout / "synthetic" / "detections.csv")
    assert list(det["class"]) == list(ldet["class"])
    assert np.allclose(det[["x", "y", "score"]].to_numpy(float), ldet[["x", "y", "score"]].to_numpy(float), atol=1e-4)
    pd.testing.assert_frame_equal(pd.read_csv(out / "synthetic" / "counts.csv").drop(columns="slide"),
                                  pd.read_csv(lout / "synthetic" / "counts.csv").drop(columns="slide"))


@pytest.mark.slow
def test_a_local_cluster_of_processes_equals_the_local_run_tissue_mask_included(
        tmp_path, one_level_slide, params, local_run, capfd):
    """Both ways to name the cluster: a default Client the caller made (it becomes dask's default
    scheduler) and the scheduler's address (as --scheduler does)."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        summary = run(analyze_task([one_level_slide], tmp_path / "addr", params=params,
                                   scheduler=cluster.scheduler_address))
        _same_as_local(local_run, tmp_path / "addr", summary)
        with distributed.Client(cluster) as client:  # the default scheduler now
            summary = run(analyze_task([one_level_slide], tmp_path / "client", params=params, client=client))
        _same_as_local(local_run, tmp_path / "client", summary)
    assert "Traceback" not in capfd.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_dask_scheduler_and_worker_processes_equal_the_local_run_and_a_dead_worker_stops_the_run(
        tmp_path, one_level_slide, params, local_run):
    """``dask scheduler`` and ``dask worker`` as separate processes on 127.0.0.1, as a user starts
    them; then the only worker is killed (no nanny to restart it): analyze stops with a message."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _dask("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                      "--dashboard-address", ":0", "--no-show")
    worker = None
    try:
        worker = _dask("distributed.cli.dask_worker", address, "--nthreads", "2", "--no-nanny",
                       "--no-dashboard", "--host", "127.0.0.1")
        with distributed.Client(address, timeout="30s", set_as_default=False) as probe:
            probe.wait_for_workers(1, timeout=60)
        summary = run(analyze_task([one_level_slide], tmp_path / "out", params=params, scheduler=address))
        _same_as_local(local_run, tmp_path / "out", summary)

        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        t = time.monotonic()
        with pytest.raises(ClusterError, match="no worker for 3 s.*dask worker"):
            run(analyze_task([one_level_slide], tmp_path / "dead", params=params, scheduler=address,
                             no_worker_timeout=3))
        assert time.monotonic() - t < 60
    finally:
        if worker is not None:
            _stop(worker)
        _stop(scheduler)


def test_a_cluster_without_workers_times_out_with_a_message():
    """No worker at all (they died, or none was started): the runner does not wait for ever."""
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None, silence_logs=50) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        from napari_mitosis.pipeline.analyze import TileJob

        runner = DistributedRunner(client, no_worker_timeout=1.0, poll=0.2)
        job = TileJob("nope.tif", 0.25, (0, 0, 10, 10), make_params(device="cpu"))
        t = time.monotonic()
        with pytest.raises(ClusterError, match="no worker for 1 s"):
            list(runner.run([job, job]))
        assert time.monotonic() - t < 15


def test_the_distributed_runner_runs_every_job_when_there_are_more_than_it_keeps_in_flight():
    """One result per job, whatever the number in flight (the first batch was taken with
    zip(jobs, range(n)), which drew one job more than it submitted and lost it)."""
    import itertools

    from napari_mitosis.pipeline import analyze

    class Done:
        _keys = itertools.count()

        def __init__(self, value):
            self.value, self.key = value, next(Done._keys)

        def done(self):
            return True

        def result(self):
            return self.value

    class FakeClient:
        def scheduler_info(self):
            return {"workers": {"w1": {"nthreads": 1}, "w2": {"nthreads": 1}}}

        def submit(self, fn, job, retries=0, pure=False):
            return Done({"tile": job.tile, "detections": None, "candidates": 0, "screened": 0, "job": job.tile})

        def cancel(self, futures):
            pass

    jobs = [analyze.TileJob("x.tif", 0.25, (i, 0, 1, 1), None) for i in range(9)]
    for in_flight in (1, 2, 4, 8, 20):
        got = [r["job"] for r in analyze.DistributedRunner(FakeClient(), in_flight=in_flight).run(jobs)]
        assert sorted(got) == [j.tile for j in jobs], in_flight
