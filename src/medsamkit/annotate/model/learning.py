"""Learning while annotating: the controller of the background learn job.

Once the person has committed enough objects (``--learn-min-objects``, across at least two images: one is
held out for validation), a round starts (automatically with ``--learn``, or on request): a separate,
niced, one-thread process (``annotate.model.learn_job``) fine-tunes the decoder with the training engine on
the annotation folder, reusing the session's embedding cache, within ``--learn-budget`` seconds. When its
validation says the new model is better (click Dice higher, box Dice not lower) it becomes a new version
(``annotate.model.versions``) and is hot-swapped into the ``ModelHost``; otherwise the old model stays.
Annotation files are only ever written by the server, so a crash or kill of the job loses nothing.

Phases: ``waiting`` (for objects), ``ready``, ``training`` (with ``job.phase`` preparing / validating /
training and progress), then ``updated``, ``kept`` (the old model) or ``failed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from medsamkit.annotate.model.compute import run_passing
from medsamkit.annotate.model.host import ModelHost, ModelLaunch
from medsamkit.annotate.model.learn_job import FIRST_VALIDATION
from medsamkit.annotate.model.versions import ModelVersions
from medsamkit.core.atomic import write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.io.annotations import annotated_objects
from medsamkit.models.loading import load_model

POLL_SECONDS = 0.5
JOB_THREADS = 1
# A round validates on at least this many objects (whole images move to validation while training keeps at
# least half of the objects): one gland cannot decide a round (a Dice on n objects is uncertain by about its
# standard deviation / sqrt(n), ~0.05 for n = 8 on glands).
MIN_VAL_OBJECTS = 8


@dataclass
class LearnSettings:
    """How the session learns (``--learn``, ``--learn-min-objects``, ``--learn-budget``)."""

    auto: bool = False
    min_objects: int = 20
    min_images: int = 2
    budget: float = 180.0  # seconds per round, everything included
    prompts: str = "box,jitter+5,center,random1,iter3"
    lr: float = 1e-4  # finetune's default: larger steps trade box Dice for click Dice on a few dozen objects
    box_anchor: float = 1.0  # every object also trains with its tight box (training.objective): box prompts keep working
    box_tolerance: float = 0.0  # box Dice may fall this much on validation and still count as "not lower"
    first_validation: int = FIRST_VALIDATION  # steps before a round's first validation (then 2x, 4x, ...)
    batch_size: int = 16
    seed: int = 0


class LearnController:
    """The learn rounds of one session: when to start, the job process, versions and the hot swap."""

    def __init__(self, host: ModelHost, annotations: Path, launch: ModelLaunch, settings: LearnSettings) -> None:
        self.host = host
        self.annotations = Path(annotations)
        self.launch = launch
        self.settings = settings
        self.folder = self.annotations / "learn"
        self.versions = ModelVersions(self.folder, host.identity)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._job: dict | None = None  # the running or last round
        self._counted_at_start = 0  # objects when the last round started: the next waits for more
        self._phase = "waiting"
        self._stop = threading.Event()
        current = self.versions.current
        if current == 0:
            host.relabel(self.versions.identity(0))
        else:  # resume with the version the person was using
            try:
                self._serve(current)
            except InputError as exc:  # its file is gone or damaged: say so, serve the launch model
                print(f"medsamkit annotate: model version {current} not loadable ({exc}); serving version 0",
                      file=sys.stderr)
                self.versions.set_current(0)
                host.relabel(self.versions.identity(0))
        self._thread = threading.Thread(target=self._watch, name="learn", daemon=True)
        self._thread.start()

    # --- reading -------------------------------------------------------------------------------------
    def counts(self) -> dict:
        """Committed objects and images that have some (from the files: every image, not only open ones)."""
        objects = annotated_objects(self.annotations)
        return {"objects": sum(len(v) for v in objects.values()), "images": len(objects)}

    def _ready(self, counts: dict) -> bool:
        s = self.settings
        new = counts["objects"] - self._counted_at_start
        return counts["images"] >= s.min_images and counts["objects"] >= s.min_objects and new >= s.min_objects

    def status(self) -> dict:
        """The state the page shows: phase, counts, the round's progress and validation, versions."""
        with self._lock:
            counts = self.counts()
            phase = self._phase
            if phase in ("waiting", "ready"):
                phase = "ready" if self._ready(counts) else "waiting"
            job = None if self._job is None else {k: v for k, v in self._job.items() if k != "trace"}
            return {"phase": phase, "auto": self.settings.auto, **counts,
                    "min_objects": self.settings.min_objects, "min_images": self.settings.min_images,
                    "budget": self.settings.budget, "current": self.versions.current,
                    "model": self.host.identity, "job": job}

    # --- control -------------------------------------------------------------------------------------
    def set_auto(self, on: bool) -> dict:
        """Switch automatic rounds on or off."""
        self.settings.auto = bool(on)
        return self.status()

    def start(self) -> dict:
        """Start a round now (InputError when one runs or there are too few objects/images)."""
        with self._lock:
            if self._proc is not None:
                raise InputError("a learn round is already running")
            counts = self.counts()
            if counts["images"] < self.settings.min_images or counts["objects"] < 2:
                raise InputError(f"learning needs objects on at least {self.settings.min_images} images "
                                 f"(one is held out for validation); have {counts['objects']} on {counts['images']}")
            self._launch(counts)
        return self.status()

    def _job_config(self, run: Path) -> dict:
        from medsamkit.training.config import FinetuneConfig

        base, base_ckpt, start = self.launch.base()
        current = self.versions.path(self.versions.current)
        s = self.settings
        cfg = FinetuneConfig(
            data=[str(self.annotations)], out=str(run), mode="decoder", prompts=s.prompts, epochs=100000,
            validate_every=100000, lr=s.lr, box_anchor=s.box_anchor, batch_size=s.batch_size, seed=s.seed, model=base,
            checkpoint=base_ckpt, init_from=str(current) if current is not None else start,
            cache=str(self.host.cache.folder), device="cpu", save_every=0, show_progress=False,
            min_val_objects=MIN_VAL_OBJECTS,
            tile_size=None)  # the evaluate view rule, as the server prompts them (annotate.session.views): the same
        # tiles, so the server's cached embeddings are reused and validation scores the views people use
        return asdict(cfg)

    def _launch(self, counts: dict) -> None:
        jobs = self.folder / "jobs"
        number = 1 + max([int(p.name) for p in jobs.glob("[0-9]*") if p.name.isdigit()] or [0])
        job_dir = jobs / f"{number:03d}"
        job_dir.mkdir(parents=True)
        write_json_atomic(job_dir / "job.json", {"config": self._job_config(job_dir / "run"),
                                                 "budget": self.settings.budget, "threads": JOB_THREADS,
                                                 "box_tolerance": self.settings.box_tolerance,
                                                 "served_clicks": self.host.click_strategy,
                                                 "first_validation": self.settings.first_validation})
        env = {**os.environ, "OMP_NUM_THREADS": str(JOB_THREADS), "MKL_NUM_THREADS": str(JOB_THREADS),
               "MEDSAMKIT_THREADS": str(JOB_THREADS)}
        log = (job_dir / "log.txt").open("wb")
        # its own session: the server decides when it stops (close), and a Ctrl-C reaches the server first
        self._proc = subprocess.Popen([sys.executable, "-m", "medsamkit.annotate.model.learn_job", str(job_dir)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self._counted_at_start = counts["objects"]
        self._job = {"number": number, "folder": str(job_dir), "phase": "starting", "objects": counts["objects"],
                     "images": counts["images"], "started": time.time(), "budget": self.settings.budget}
        self._phase = "training"

    def stop(self) -> dict:
        """Stop the running round (the model stays as it is)."""
        with self._lock:
            if self._proc is None:
                raise InputError("no learn round is running")
            self._terminate()
            self._job.update(phase="failed", error="stopped by the person")
            self._phase = "failed"
        return self.status()

    def revert(self, version: int) -> dict:
        """Serve an earlier (or any existing) version from now on."""
        with self._lock:
            self.versions.entry(version)  # KeyError (404) first
            self._serve(int(version))
            self.versions.set_current(int(version))
        return self.status()

    def _serve(self, version: int) -> None:
        path = self.versions.path(version)
        # on a thread that ends with the load: no OpenMP team stays behind on the watcher (annotate.model.compute),
        # and the load does not wait behind the compute thread's queue while this controller's lock is held
        if path is None:
            model = run_passing(self.launch.load)
        else:
            model = run_passing(load_model, str(path), None, self.launch.device)
        self.host.swap(model, self.versions.identity(version))

    # --- the watcher thread --------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                with self._lock:
                    if self._proc is not None:
                        self._poll()
                    elif self.settings.auto and self._phase != "training":
                        counts = self.counts()
                        if self._ready(counts):
                            self._launch(counts)
            except Exception as exc:  # the watcher must survive anything a round does
                if self._job is not None:
                    self._job.update(phase="failed", error=f"{type(exc).__name__}: {exc}")
                self._phase = "failed"
                self._proc = None

    def _poll(self) -> None:
        job_dir = Path(self._job["folder"])
        status = _read_json(job_dir / "status.json") or {}
        if status:
            self._job.update({k: v for k, v in status.items() if k not in ("seconds",)})
            self._job["seconds"] = round(time.time() - self._job["started"], 1)
            if status.get("phase") == "training":
                steps = job_dir / "run" / "steps.csv"
                self._job["steps"] = max(0, sum(1 for _ in steps.open()) - 1) if steps.is_file() else 0
                self._job["progress"] = min(1.0, round(self._job["seconds"] / max(self.settings.budget, 1), 3))
        code = self._proc.poll()
        if code is None:
            return
        self._proc = None
        result = _read_json(job_dir / "result.json")
        if code != 0 or result is None:
            self._job.update(phase="failed", error=status.get("error") or f"learn job exited with status {code}")
            self._phase = "failed"
            return
        self._job.update(result, phase="done", progress=1.0)
        if result["accepted"]:
            item = self.versions.add(result["checkpoint"], result)
            self._serve(item["version"])
            self._job["version"] = item["version"]
            self._phase = "updated"
        else:
            self._phase = "kept"

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait(self, timeout: float) -> dict:
        """Block until no round runs (tests, benchmarks); the status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._proc is None and self._phase != "training":
                    return self.status()
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"learn round still running after {timeout} s")

    def close(self) -> None:
        """Stop the watcher and any running job."""
        self._stop.set()
        with self._lock:
            self._terminate()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
