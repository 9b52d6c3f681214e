"""Why the annotator runs every model call on one thread (``annotate.model.compute``): a click's search timed with
torch used by that one thread only, against the same with a second thread that has run torch once and still
lives (as the server's request threads and embedding worker did before), in alternating rounds of one run.

PyTorch's CPU kernels run on OpenMP; each thread that calls them keeps a team of worker threads, and once the
teams hold more threads than there are cores, GNU OpenMP's idle workers stop spinning and sleep between kernels,
so each of the decoder's many small kernels pays a wake-up. The image is builtin:dsb-nuclei's (512 x 512, the
annotator latency benchmark's); each click is a positive click at the centre of one of its nuclei, answered by
the bundled LiteMedSAM's click search (``ClickAnswerer``, a new click every call: no answer from memory).
Prints JSON: the median click in each setting per round, the medians over rounds and their ratio.

Usage: python benchmarks/compute_thread.py [--clicks 20] [--rounds 3] [--smoke]   (--smoke: 3 clicks, 1 round)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import numpy as np
import torch

from _shared import add_smoke, apply_smoke
from medsamkit.core.objects import extract_objects
from medsamkit.core.runtime import setup
from medsamkit.io.datasets import open_dataset
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.prompts.clicks import ClickAnswerer
from medsamkit.prompts.simulate import Prompt


class SecondTorchThread:
    """A thread that runs one torch product (which gives it an OpenMP team) and then waits, alive, until closed."""

    def __init__(self) -> None:
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        a = torch.randn(256, 256)
        for _ in range(5):
            a = torch.tanh(a @ a.T / 256)  # big enough to run on every thread
        self._ready.set()
        self._stop.wait()

    def close(self) -> None:
        """Let the thread end (OpenMP frees its team with it)."""
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, (), clicks=3, rounds=1)
    setup()
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    predictor = Predictor(load_model("litemedsam"))
    predictor.set_image(case.image)
    answerer = ClickAnswerer(predictor, "search")
    centres = [np.argwhere(o.mask(case.label.shape)).mean(0)[::-1] for o in extract_objects(case.label)]
    calls = iter(range(10**9))

    def median_click_ms() -> float:
        times = []
        for centre in centres[: args.clicks]:
            shift = next(calls) * 1e-3  # a new prompt every call: the answerer remembers its answers
            prompt = Prompt(points=(centre + shift)[None], labels=np.array([1]))
            t0 = time.perf_counter()
            answerer.answer([prompt])
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    median_click_ms()  # warm-up
    rounds = []
    for _ in range(args.rounds):
        one = median_click_ms()
        other = SecondTorchThread()
        two = median_click_ms()
        other.close()
        rounds.append({"one_thread_ms": round(one, 1), "second_thread_alive_ms": round(two, 1)})
    one = statistics.median(r["one_thread_ms"] for r in rounds)
    two = statistics.median(r["second_thread_alive_ms"] for r in rounds)
    print(json.dumps({
        "image": "builtin:dsb-nuclei (512 x 512)", "clicks": min(args.clicks, len(centres)), "rounds": rounds,
        "threads": torch.get_num_threads(), "cores": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
        "median_ms": {"one_thread": round(one, 1), "second_thread_alive": round(two, 1)},
        "second_over_one": round(two / one, 3)}))


if __name__ == "__main__":
    main()
