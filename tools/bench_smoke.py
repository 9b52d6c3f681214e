"""Run every benchmark script at its --smoke size (`make bench-smoke`, CI after `make test`): each must finish
with exit code 0 and leave the checkout as it was (benchmarks/results/ above all). Prints one line per
script with its seconds, then the total; exit 1 when a script failed or changed a file.

Usage: python tools/bench_smoke.py [NAME ...]   (default: every benchmarks/*.py not starting with "_")
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snapshot() -> dict[str, str]:
    """sha256 of every file under benchmarks/results, and the checkout's untracked/modified files (git)."""
    state = {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((REPO / "benchmarks" / "results").rglob("*")) if p.is_file()}
    git = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                         text=True, check=False)
    if git.returncode == 0:
        state["git status"] = git.stdout
    return state


def main(names: list[str]) -> int:
    """Run the scripts; 0 when all passed and nothing changed."""
    scripts = [REPO / "benchmarks" / (n if n.endswith(".py") else f"{n}.py") for n in names] or sorted(
        p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    before, failed, began = snapshot(), [], time.perf_counter()
    for script in scripts:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=REPO, capture_output=True, text=True,
                              check=False)
        seconds = time.perf_counter() - t0
        last = (done.stdout.strip().splitlines() or [""])[-1][:100]
        print(f"{'ok' if done.returncode == 0 else 'FAILED':6s} {seconds:6.1f} s  {script.name}  {last}", flush=True)
        if done.returncode:
            failed.append(script.name)
            print(done.stderr[-3000:], file=sys.stderr)
    after = snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    print(f"bench-smoke: {len(scripts) - len(failed)}/{len(scripts)} scripts passed in "
          f"{time.perf_counter() - began:.0f} s")
    if changed:
        print(f"bench-smoke: the run changed {', '.join(changed)}", file=sys.stderr)
    if failed:
        print(f"bench-smoke: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
