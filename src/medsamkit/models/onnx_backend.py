"""An onnxruntime-backed SAM-family model (from `medsamkit export`), usable by Predictor like SamFamilyModel.

`Predictor(OnnxSamModel.load(folder))` runs the exported encoder and decoder on CPU (or any onnxruntime
execution provider given); prompts are mapped to the decoder graph's point/corner arrays here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from medsamkit.core.errors import InputError
from medsamkit.models.sam import Preprocessing


class OnnxSamModel:
    """Encoder + decoder ONNX sessions with the attributes Predictor uses (preprocessing, encode, decode)."""

    def __init__(self, folder: str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        meta_path = folder / "export.json"
        if not meta_path.is_file():
            raise InputError(f"{folder}: no export.json: not a folder written by `medsamkit export`")
        meta = json.loads(meta_path.read_text())
        self.name = meta["model"]
        self.preprocessing = Preprocessing(**meta["preprocessing"])
        self.point_prompts: bool = bool(meta.get("point_prompts", True))  # as SamFamilyModel.point_prompts
        self.click_strategy: str | None = meta.get("click_strategy")  # as SamFamilyModel.click_strategy
        self.class_names: list[str] = []  # the exported decoder has no class head
        self._mask_size = tuple(meta["mask_input_size"])
        opts = ort.SessionOptions()
        n = threads or int(os.environ.get("MEDSAMKIT_THREADS", "0")) or torch.get_num_threads()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers or ["CPUExecutionProvider"]
        sessions = {}
        for part in ("encoder", "decoder"):
            path = folder / meta[part]
            if not path.is_file():
                raise InputError(f"{path}: missing ONNX file")
            sessions[part] = ort.InferenceSession(str(path), opts, providers=providers)
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> OnnxSamModel:
        """Open an export folder."""
        return cls(folder, threads)

    # --- the SamFamilyModel surface Predictor relies on -------------------------------------------
    def eval(self) -> OnnxSamModel:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return self._mask_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B,3,S,S) batch -> embedding (B,256,h,w)."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.encoder.run(None, {"image": arr})[0])

    def decode(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As SamFamilyModel.decode (model-input frame): low-res logits (P,C,m,m) and IoU (P,C)."""
        coords, labels = prompt_arrays(points, boxes)
        p = coords.shape[0] if coords is not None else masks.shape[0]
        if coords is None:  # mask only: the official prompt encoder pads with one "not a point"
            coords = np.zeros((p, 1, 2), np.float32)
            labels = -np.ones((p, 1), np.float32)
        has_mask = masks is not None
        mask_in = (masks.detach().cpu().numpy().astype(np.float32) if has_mask
                   else np.zeros((p, 1, *self._mask_size), np.float32))
        low, iou = self.decoder.run(None, {
            "image_embeddings": np.ascontiguousarray(embedding.detach().cpu().numpy(), dtype=np.float32),
            "point_coords": coords, "point_labels": labels, "mask_input": mask_in,
            "has_mask_input": np.array([float(has_mask)], np.float32),
        })
        sel = slice(1, None) if multimask else slice(0, 1)
        return torch.from_numpy(low[:, sel]), torch.from_numpy(iou[:, sel])


def prompt_arrays(points: tuple[torch.Tensor, torch.Tensor] | None,
                  boxes: torch.Tensor | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Points and boxes as one (P,N,2) coordinate array + (P,N) labels in the prompt encoder's token order.

    As PromptEncoder.forward: points first (plus one padding point when there is no box), then the two
    box corners labelled 2 and 3.
    """
    parts_c, parts_l = [], []
    if points is not None:
        c, lab = (t.detach().cpu().numpy() for t in points)
        parts_c.append(c.astype(np.float32))
        parts_l.append(lab.astype(np.float32))
        if boxes is None:
            parts_c.append(np.zeros((c.shape[0], 1, 2), np.float32))
            parts_l.append(-np.ones((c.shape[0], 1), np.float32))
    if boxes is not None:
        b = boxes.detach().cpu().numpy().astype(np.float32).reshape(-1, 2, 2)
        parts_c.append(b)
        parts_l.append(np.tile(np.array([[2.0, 3.0]], np.float32), (b.shape[0], 1)))
    if not parts_c:
        return None, None
    return np.ascontiguousarray(np.concatenate(parts_c, 1)), np.ascontiguousarray(np.concatenate(parts_l, 1))
