"""The model versions of an annotation session, kept in ``OUT/learn/``: version 0 is the model the session
was launched with; each accepted learn round adds ``vNNN.pt`` (a fine-tuning checkpoint, loadable with
``--model OUT/learn/vNNN.pt``) and its entry in ``versions.json``: sha256, the model it started from, the
objects it was trained and validated on, validation Dice before/after, seconds. ``current`` is the version
being served; reverting only moves it, so every version stays available.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from medsamkit.core.atomic import write_bytes_atomic, write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.models.checkpoints import sha256_of

FORMAT = "medsamkit-learn/1"


class ModelVersions:
    """``OUT/learn/versions.json`` and the checkpoints it lists."""

    def __init__(self, folder: str | Path, launched: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = self.folder / "versions.json"
        base = {"version": 0, "model": launched.get("model"), "checkpoint_sha256": launched.get("checkpoint_sha256"),
                "file": None, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        data = self._read()
        if data is not None and data["versions"][0].get("checkpoint_sha256") != base["checkpoint_sha256"]:
            # launched with another model: its versions do not apply; keep them aside, start afresh
            stamp = str(data["versions"][0].get("checkpoint_sha256") or "none")[:12]
            shutil.move(str(self.index), str(self.folder / f"versions-{stamp}.json"))
            data = None
        self.data = data or {"format": FORMAT, "current": 0, "versions": [base]}
        self._write()

    def _read(self) -> dict | None:
        if not self.index.is_file():
            return None
        try:
            data = json.loads(self.index.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.index}: unreadable ({exc})") from None
        if data.get("format") != FORMAT or not data.get("versions"):
            raise InputError(f"{self.index}: not a medsamkit learn index")
        return data

    def _write(self) -> None:
        write_json_atomic(self.index, self.data)

    @property
    def current(self) -> int:
        """The version being served."""
        return int(self.data["current"])

    def entry(self, version: int) -> dict:
        """One version's entry; KeyError (404) for an unknown one."""
        for item in self.data["versions"]:
            if int(item["version"]) == int(version):
                return item
        raise KeyError(f"model version {version}")

    def listing(self) -> dict:
        """All versions, the current one marked."""
        return {"current": self.current, "versions": self.data["versions"]}

    def path(self, version: int) -> Path | None:
        """The checkpoint file of a learned version (None for version 0, the launch model)."""
        name = self.entry(version).get("file")
        return None if name is None else self.folder / name

    def identity(self, version: int) -> dict:
        """What each object records about the model that made it."""
        item = self.entry(version)
        model = item["model"] if item.get("file") is None else str(self.folder / item["file"])
        return {"model": model, "checkpoint_sha256": item["checkpoint_sha256"], "model_version": int(version)}

    def add(self, checkpoint: str | Path, result: dict) -> dict:
        """Keep an accepted round's checkpoint as the next version and make it current."""
        number = max(int(v["version"]) for v in self.data["versions"]) + 1
        name = f"v{number:03d}.pt"
        target = self.folder / name
        write_bytes_atomic(target, Path(checkpoint).read_bytes())  # the index names it only afterwards
        item = {"version": number, "model": str(target), "file": name, "checkpoint_sha256": sha256_of(target),
                "parent": self.current, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **{k: result.get(k) for k in ("before", "after", "reason", "trained_on", "validated_on",
                                              "steps", "train_seconds", "seconds", "validations")}}
        self.data["versions"].append(item)
        self.data["current"] = number
        self._write()
        return item

    def set_current(self, version: int) -> dict:
        """Serve another existing version from now on (revert)."""
        item = self.entry(version)
        self.data["current"] = int(version)
        self._write()
        return item
