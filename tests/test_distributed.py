"""Dask runs give the same rows as a local run: real LiteMedSAM on builtin:lung-gtv slices, a real local
cluster of worker processes, a worker killed mid-run, the driver killed and resumed, concurrent cache writes."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medsamkit.distributed.cluster import DaskConfig
from medsamkit.distributed.runner import DaskExecutor
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate

TIMING = {"seconds", "embed_seconds", "decode_seconds", "baseline_seconds"}


def _sorted_rows(path: Path) -> list[tuple]:
    with path.open(newline="") as fh:
        rows = [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]
    return sorted(tuple(sorted(r.items())) for r in rows)


def _on_dask(workers: int) -> DaskExecutor:
    return DaskExecutor(DaskConfig(workers=workers))


def _cfg(out: Path, **kw) -> EvaluateConfig:
    base = dict(data="builtin:lung-gtv", out=str(out), prompts="box,box+iter2", max_images=1, baseline=False,
                figures=False, show_progress=False)
    return EvaluateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, predictor):
    """The one-process result, on one thread like each worker (float kernels then agree bit for bit)."""
    import torch

    out = tmp_path_factory.mktemp("local") / "ev"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = evaluate(_cfg(out), predictor)
    finally:
        torch.set_num_threads(threads)
    return out, summary


def test_two_workers_give_the_rows_and_summary_of_one_process(tmp_path, local_run):
    local_out, local_summary = local_run
    out = tmp_path / "dask"
    summary = evaluate(_cfg(out), executor=_on_dask(2))
    assert summary["failed"] == []
    assert _sorted_rows(out / "per_object.csv") == _sorted_rows(local_out / "per_object.csv")
    assert summary["images"] == local_summary["images"] and summary["objects"] == local_summary["objects"]
    assert [r["dice"] for r in summary["table"]] == [r["dice"] for r in local_summary["table"]]
    again = evaluate(_cfg(out), executor=_on_dask(1))  # all done: nothing recomputed
    assert again["new_images"] == 0


@pytest.fixture(scope="module")
def six_crops(tmp_path_factory, dsb_crops):
    """Six real 128x128 crops of builtin:dsb-nuclei (six tasks) as an images/ + labels/ folder."""
    corners = [(128 * (i // 3), 128 * (i % 3)) for i in range(6)]
    return dsb_crops(tmp_path_factory.mktemp("crops"), corners, (128, 128))


def _crops_cfg(root, out) -> EvaluateConfig:
    return EvaluateConfig(data=str(root), out=str(out), prompts="box,box+iter2", max_objects=6, baseline=False,
                          figures=False, show_progress=False)


@pytest.fixture(scope="module")
def crops_reference(six_crops, tmp_path_factory, predictor):
    """The one-process result, on one thread like each worker (float kernels then agree bit for bit)."""
    import torch

    out = tmp_path_factory.mktemp("ref") / "ev"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate(_crops_cfg(six_crops, out), predictor)
    finally:
        torch.set_num_threads(threads)
    return _sorted_rows(out / "per_object.csv")


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path, six_crops, crops_reference):
    out = tmp_path / "dask"
    killed = []

    def kill_a_worker(_row):
        if killed:
            return
        import distributed

        pids = distributed.get_client().run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    summary = evaluate(_crops_cfg(six_crops, out), on_image=kill_a_worker, executor=_on_dask(2))
    assert killed and summary["failed"] == [] and summary["images"] == 6
    rows = _sorted_rows(out / "per_object.csv")
    assert len(rows) == len(set(rows))
    assert rows == crops_reference


@pytest.mark.slow
def test_a_killed_driver_resumes_on_the_cluster_and_ends_identical(tmp_path, six_crops, crops_reference):
    out = tmp_path / "dask"
    base = [sys.executable, "-m", "medsamkit", "evaluate", "--data", str(six_crops), "--prompts", "box,box+iter2",
            "--max-objects", "6", "--no-baseline", "--no-figures", "--out", str(out)]
    proc = subprocess.Popen(base + ["--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # one worker: the cases finish one by one
    deadline, done = time.time() + 300, out / "done.txt"
    while time.time() < deadline and (not done.exists() or not done.read_text().strip()):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local cluster die at once
    proc.wait()
    n_before = len(done.read_text().split())
    assert 1 <= n_before < 6
    result = subprocess.run(base + ["--workers", "2"], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(done.read_text().split()) == 6
    assert _sorted_rows(out / "per_object.csv") == crops_reference


def test_evaluate_volume_on_two_workers_gives_the_rows_of_one_process(tmp_path):
    from medsamkit.volumes import EvaluateVolumeConfig, evaluate_volumes

    def cfg(out):
        return EvaluateVolumeConfig(data="builtin:lung-gtv", out=str(out), prompts="box", max_images=1,
                                    show_progress=False)

    local = evaluate_volumes(cfg(tmp_path / "local"))
    summary = evaluate_volumes(cfg(tmp_path / "dask"), executor=_on_dask(2))
    assert summary["failed"] == [] and summary["volumes"] == local["volumes"] == 1
    for table in ("per_volume.csv", "per_slice.csv"):
        assert _sorted_rows(tmp_path / "dask" / table) == _sorted_rows(tmp_path / "local" / table)


def test_bad_input_in_one_case_is_reported_once_and_the_run_goes_on(tmp_path, small_folder):
    from medsamkit.io.images import write_mask

    broken = tmp_path / "data"
    for sub in ("images", "labels"):
        (broken / sub).mkdir(parents=True)
        for f in (small_folder / sub).iterdir():
            (broken / sub / f.name).write_bytes(f.read_bytes())
    write_mask(broken / "labels" / "crop1.png", np.ones((7, 9), np.uint8))  # label/image size mismatch
    cfg = EvaluateConfig(data=str(broken), out=str(tmp_path / "ev"), prompts="box", baseline=False,
                         figures=False, show_progress=False)
    summary = evaluate(cfg, executor=_on_dask(1))
    assert len(summary["failed"]) == 1 and "crop1" in summary["failed"][0]
    assert summary["images"] == 1


def _write_entry(folder: str, seed: int, barrier) -> None:
    import torch

    from medsamkit.embedding.cache import EmbeddingCache
    from medsamkit.models import load_model
    from medsamkit.predictor import Embedding

    cache = EmbeddingCache(folder, load_model("litemedsam"))
    features = torch.from_numpy(np.random.default_rng(0).random((1, 256, 64, 64), dtype=np.float32))
    barrier.wait()
    for _ in range(20):
        cache.save("k" * 64, Embedding(features, (256, 256), (256, 256)))


def test_two_processes_writing_the_same_cache_entry_leave_one_valid_entry(tmp_path, litemedsam):
    from medsamkit.embedding.cache import EmbeddingCache

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_entry, args=(str(tmp_path), i, barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k" * 64 + ".npz"]  # no temporary file left
    entry = EmbeddingCache(tmp_path, litemedsam).load("k" * 64)
    assert entry is not None and tuple(entry.features.shape) == (1, 256, 64, 64)


def test_embed_on_a_worker_writes_the_index_of_one_process(tmp_path, small_folder, predictor):
    import json

    from medsamkit.embedding.precompute import EmbedConfig, embed_dataset

    def cfg(out):
        return EmbedConfig(data=str(small_folder), out=str(out), show_progress=False)

    local = embed_dataset(cfg(tmp_path / "local"), predictor)
    summary = embed_dataset(cfg(tmp_path / "dask"), executor=_on_dask(1))
    assert summary["failed"] == [] and (summary["images"], summary["computed"]) == (local["images"], 2)
    indexes = [json.loads((tmp_path / k / "index.json").read_text()) for k in ("local", "dask")]
    assert indexes[0] == indexes[1]  # the same windows, cache keys and model header
    again = embed_dataset(cfg(tmp_path / "dask"), executor=_on_dask(1))
    assert (again["computed"], again["hits"]) == (0, 2)


def test_samaug_priors_on_two_workers_are_byte_identical(tmp_path, small_folder):
    from medsamkit.samaug.everything import EverythingConfig
    from medsamkit.samaug.priors import PriorsConfig, compute_priors

    def cfg(out):
        return PriorsConfig(data=str(small_folder), out=str(out), everything=EverythingConfig(), progress=False)

    compute_priors(cfg(tmp_path / "local"))
    index = compute_priors(cfg(tmp_path / "dask"), executor=_on_dask(2))
    assert index["failed"] == [] and len(index["images"]) == 2
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "priors").rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (tmp_path / "dask" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes(), rel
    for rel in (p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "masks").rglob("*.npz")):
        a, b = np.load(tmp_path / "local" / rel), np.load(tmp_path / "dask" / rel)
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:  # masks equal; float scores to float rounding (a worker runs 1 thread, the test 2)
            if np.issubdtype(a[k].dtype, np.floating):
                np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=f"{rel}:{k}")
            else:
                assert np.array_equal(a[k], b[k]), f"{rel}:{k}"


def _assert_tiles_spread_and_join(cfg, tmp_path: Path, predictor) -> None:
    """One process (one thread, like each worker: float kernels then agree bit for bit) against --workers 2:
    the image's tiles run as several tasks and join into the same per_object and per_image rows."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate(cfg(tmp_path / "local"), predictor)
    finally:
        torch.set_num_threads(threads)
    summary = evaluate(cfg(tmp_path / "dask"), executor=_on_dask(2))
    assert summary["failed"] == [] and summary["cluster"]["tasks"] > 1
    local_rows = _sorted_rows(tmp_path / "local" / "per_object.csv")
    assert len({dict(r)["tile"] for r in local_rows}) > 1  # the objects lie on several tiles to spread
    assert _sorted_rows(tmp_path / "dask" / "per_object.csv") == local_rows
    assert _sorted_rows(tmp_path / "dask" / "per_image.csv") == _sorted_rows(tmp_path / "local" / "per_image.csv")


def test_the_tiles_of_one_image_spread_over_workers_and_join_into_its_rows(tmp_path, predictor):
    """One image with --tile 256: its tiles run as separate tasks; the joined rows equal one process's."""

    def cfg(out):
        return EvaluateConfig(data="builtin:dsb-nuclei", out=str(out), prompts="box", max_objects=12, tile_size=256,
                              baseline=False, figures=False, show_progress=False)

    _assert_tiles_spread_and_join(cfg, tmp_path, predictor)


def test_monuseg_tiles_on_two_workers_give_the_rows_of_one_process(tmp_path, monuseg_root, predictor):
    """Real MoNuSeg: a 512x512 crop of a test slide at --tile 256 (its tiles spread over the workers) gives the
    per_object.csv (sorted) and per_image.csv of one process."""

    from medsamkit.io.images import read_image, write_mask

    name = "TCGA-2Z-A9J9-01A-01-TS1.png"
    image = read_image(monuseg_root / "test" / "images" / name)[:512, :512]
    label = read_image(monuseg_root / "test" / "labels" / name)[:512, :512]
    root = tmp_path / "crop"
    write_mask(root / "images" / "slide.png", image)
    write_mask(root / "labels" / "slide.png", label)

    def cfg(out):
        return EvaluateConfig(data=str(root), out=str(out), prompts="box,box+iter2", max_objects=8, tile_size=256,
                              baseline=False, figures=False, show_progress=False)

    _assert_tiles_spread_and_join(cfg, tmp_path, predictor)
