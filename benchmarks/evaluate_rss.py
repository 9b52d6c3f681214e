"""Peak memory of a cold `medsamkit evaluate` on MoNuSeg test (issue 7: peak RSS <= 1.5 GB).

Runs the real CLI in a child process with no embedding cache (every tile is encoded in that process),
samples the child's resident memory once a second, and prints JSON: peak RSS (the kernel's high-water
mark), RSS after each finished image (so growth with the number of images is visible), wall time, and
the evaluate summary's counts.

Usage: ``python benchmarks/evaluate_rss.py [--data MONUSEG_TEST] [--max-images 14] [--max-objects 60]
[--prompts box,box+5,center,random3,iter5] [--no-baseline] [--out bench-out/evaluate_rss]`` (``--smoke``: one
image, 5 nuclei, box prompts, in a temporary folder). Without MoNuSeg (shared/ absent) it prints a JSON line
saying so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _shared import add_smoke, apply_smoke, monuseg_dir, require_shared

POLL_S = 1.0


def rss_mb(pid: int) -> float | None:
    """Current resident set size of a process in MB (None once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def finished_images(out: Path) -> int:
    """Rows of the evaluate run's per_image.csv (one per finished image)."""
    path = out / "per_image.csv"
    if not path.exists():
        return 0
    with path.open() as fh:
        return sum(1 for _ in csv.DictReader(fh))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="MoNuSeg test folder (images/ + labels/)")
    ap.add_argument("--max-images", type=int, default=14)
    ap.add_argument("--max-objects", type=int, default=60, help="nuclei per image (seeded choice)")
    ap.add_argument("--prompts", default="box,box+5,center,random3,iter5")
    ap.add_argument("--no-baseline", action="store_true", help="skip the random-walker baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench-out/evaluate_rss"))
    add_smoke(ap)
    args = ap.parse_args(argv)
    apply_smoke(args, ("out",), max_images=1, max_objects=5, prompts="box", no_baseline=True)
    data = args.data or require_shared(monuseg_dir("test"), "MoNuSeg test (shared/data/monuseg)")
    if args.out.exists():
        shutil.rmtree(args.out)  # a cold run: no resumed rows, no cached embeddings
    cmd = [sys.executable, "-m", "medsamkit", "evaluate", "--data", str(data), "--out", str(args.out),
           "--prompts", args.prompts, "--max-images", str(args.max_images),
           "--max-objects", str(args.max_objects), "--no-figures"]
    if args.no_baseline:
        cmd.append("--no-baseline")
    env = {**os.environ, "MEDSAMKIT_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    per_image: dict[int, float] = {}  # the largest sampled RSS while that many images were finished

    def poll() -> None:
        while child.poll() is None:
            now = rss_mb(child.pid)
            if now is not None:
                done = finished_images(args.out)
                per_image[done] = max(per_image.get(done, 0.0), now)
            time.sleep(POLL_S)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, stderr = child.communicate()
    watcher.join()
    wall = time.perf_counter() - t0
    if child.returncode != 0:
        print(json.dumps({"error": f"evaluate exited {child.returncode}", "stderr": stderr[-2000:]}))
        return 1
    summary = json.loads((args.out / "summary.json").read_text())
    # ru_maxrss of waited-for children, in KiB on Linux: the kernel's high-water mark, not a sample
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "benchmark": "evaluate_rss (cold `medsamkit evaluate`, no embedding cache)",
        "command": " ".join(os.path.relpath(c) if c == str(data) else c for c in cmd[1:]),
        "threads": args.threads,
        "images": summary.get("images"), "objects": summary.get("objects"), "tiles": summary.get("tiles"),
        "peak_rss_mb": round(peak, 1),
        "target_mb": 1536,
        "meets_target": peak <= 1536,
        "max_sampled_rss_mb_by_finished_images": {str(k): round(v, 1) for k, v in sorted(per_image.items())},
        "wall_s": round(wall, 1),
        "load_avg_1min_end": os.getloadavg()[0],
    }
    text = json.dumps(result, indent=2)
    (args.out / "rss.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
