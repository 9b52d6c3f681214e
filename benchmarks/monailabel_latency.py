"""Latency of a click through the MONAI Label-compatible API (`medsamkit annotate --monailabel`), as 3D Slicer
feels it: POST /monailabel/TOKEN/infer/medsamkit?image=ID with Slicer's multipart form (params: one foreground
click [i, j, k] on an embedded CT slice, the slice, the label, reset_state), answered with a multipart reply
holding the whole label volume as NIfTI on the CT's grid (gzip; encoding included), through a real uvicorn on
loopback, on builtin:lung-gtv (the GTV's largest slice of --patient). Median over --calls clicks, each a new
object (target <= 250 ms). The peer in the same run: our own API's click alone (POST /api/predict, JSON with
base64 PNG masks) on the same slice, interleaved call by call; and the same for a box (Slicer's ROI), whose
model answer is fast, so its time is mostly the API's own (HTTP, forms, NIfTI).

Prints JSON and writes it to benchmarks/results/monailabel_latency.json.
Usage: python benchmarks/monailabel_latency.py [--calls 30] [--patient pat_4] [--device cpu]
(--smoke: 2 calls on the smallest patient pat_2, the JSON in a temporary folder).
"""

from __future__ import annotations

import argparse
import email
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from _shared import add_smoke, apply_smoke
from medsamkit.annotate.http.launch import BackgroundServer
from medsamkit.annotate.session.config import AnnotateConfig
from medsamkit.annotate.session.workspace import Workspace
from medsamkit.core import runtime
from medsamkit.io.datasets import open_dataset

LIMIT = "----------lImIt_of_THE_fIle_eW_$"  # the boundary MONAI Label's client (and so Slicer) sends


def slicer_body(params: dict) -> bytes:
    """The multipart form MONAILabelClient.infer sends: one ``params`` field."""
    return (f"--{LIMIT}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
            f"--{LIMIT}--\r\n\r\n").encode()


def label_bytes(reply: httpx.Response) -> int:
    """Check the reply is MONAI Label's multipart answer and return the size of its label file."""
    msg = email.message_from_bytes(b"Content-Type: " + reply.headers["content-type"].encode() + b"\r\n\r\n"
                                   + reply.content)
    files = [p for p in msg.get_payload() if p.get_filename()]
    assert files and files[0].get_filename().endswith(".nii.gz"), reply.headers
    return len(files[0].get_payload(decode=True))


def clicks_of(truth: np.ndarray, n: int) -> list[list[int]]:
    """``n`` pixels inside the GTV, spread over it (a new object's first click each)."""
    ys, xs = np.nonzero(truth)
    order = np.random.default_rng(0).permutation(len(xs))[:n]
    return [[int(xs[i]), int(ys[i])] for i in order]


def run(patient: str, calls: int, device: str | None, root: Path) -> dict:
    """The numbers of one run (see the module docstring)."""
    case = next(c for c in open_dataset("builtin:lung-gtv").items() if c.name.endswith(patient))
    truth = case.label == 1
    k = int(truth.sum((1, 2)).argmax())
    vid = f"lung-gtv_{patient}"
    ws = Workspace(AnnotateConfig("builtin:lung-gtv", out=str(root / "out"), device=device, monailabel=True))
    compat, ours, inside, sizes, boxes, our_boxes = [], [], [], [], [], []
    ys, xs = np.nonzero(truth[k])
    tight = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    with BackgroundServer(ws, token="bench") as server, httpx.Client(timeout=600) as http:
        url = f"{server.monailabel}infer/medsamkit"
        auth = {"Authorization": "Bearer bench"}
        t0 = time.perf_counter()
        http.post(f"{server.base}/api/open", json={"image": vid, "axis": 0, "slice": k}, headers=auth)
        embed = time.perf_counter() - t0
        for i, (x, y) in enumerate(clicks_of(truth[k], calls + 2)):
            params = {"label": "GTV", "foreground": [[x, y, k]], "background": [], "slice": k, "reset_state": True,
                      "client_id": "bench"}
            t = time.perf_counter()
            reply = http.post(url, params={"image": vid}, content=slicer_body(params),
                              headers={"content-type": f"multipart/form-data; boundary={LIMIT}"})
            reply.raise_for_status()
            sizes.append(label_bytes(reply))
            compat.append(time.perf_counter() - t)
            body = {"image": vid, "axis": 0, "slice": k, "points": [[x + 1, y, 1]], "client": f"page{i}"}
            t = time.perf_counter()
            answer = http.post(f"{server.base}/api/predict", json=body, headers=auth)
            answer.raise_for_status()
            answer.json()
            ours.append(time.perf_counter() - t)
            inside.append(answer.json()["seconds"])
            # a box (Slicer's ROI: [i0, i1, j0, j1, k0, k1]), a new one every call, and our API's box
            x0, y0, x1, y1 = tight[0] - i % 5, tight[1], tight[2] + i % 3, tight[3]
            params = {"label": "GTV", "foreground": [], "background": [], "roi": [x0, x1, y0, y1, k, k],
                      "reset_state": True, "client_id": "bench"}
            t = time.perf_counter()
            reply = http.post(url, params={"image": vid}, content=slicer_body(params),
                              headers={"content-type": f"multipart/form-data; boundary={LIMIT}"})
            reply.raise_for_status()
            label_bytes(reply)
            boxes.append(time.perf_counter() - t)
            body = {"image": vid, "axis": 0, "slice": k, "box": [x0, y0, x1 + 1, y1], "client": f"page{i}"}
            t = time.perf_counter()
            http.post(f"{server.base}/api/predict", json=body, headers=auth).raise_for_status()
            our_boxes.append(time.perf_counter() - t)
    ws.segmenter.close()
    med = {name: 1000 * statistics.median(v[2:]) for name, v in (("compat", compat), ("ours", ours),
                                                                  ("box", boxes), ("our_box", our_boxes))}
    return {"volume": f"builtin:lung-gtv {patient}", "shape": list(case.image.shape), "slice": k,
            "embed_slice_s": round(embed, 3),
            "monailabel_infer_click_http_median_ms": round(med["compat"], 1),
            "monailabel_infer_click_http_p90_ms": round(1000 * float(np.percentile(compat[2:], 90)), 1),
            "label_nifti_bytes_median": int(statistics.median(sizes)),
            "our_api_click_http_median_ms": round(med["ours"], 1),
            "our_api_click_in_server_median_ms": round(1000 * statistics.median(inside[2:]), 1),
            "monailabel_over_our_api": round(med["compat"] / med["ours"], 2),
            "monailabel_infer_box_http_median_ms": round(med["box"], 1),
            "our_api_box_http_median_ms": round(med["our_box"], 1),
            "monailabel_box_over_our_api": round(med["box"] / med["our_box"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--patient", default="pat_4", help="the builtin:lung-gtv volume")
    ap.add_argument("--device", default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results" /
                    "monailabel_latency.json")
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("results",), calls=2, patient="pat_2")
    runtime.setup()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.patient, args.calls, args.device, Path(tmp))
    report = {"command": f"python benchmarks/monailabel_latency.py --calls {args.calls} --patient {args.patient}",
              "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
              "threads": torch.get_num_threads(), "load_avg_1min": float(open("/proc/loadavg").read().split()[0]),
              "calls": args.calls, **result,
              "targets": {"monailabel_infer_click_http_median_ms": 250},
              "met": result["monailabel_infer_click_http_median_ms"] <= 250}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
