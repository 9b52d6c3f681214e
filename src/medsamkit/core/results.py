"""The one results store of every resumable run: a run identity, append-only CSV tables, a list of done cases.

- ``config.json`` records the run's settings; reopening the folder with settings that differ in an
  identity key is refused with one line naming the keys (results of two configurations never mix).
- Tables are CSV files with fixed columns. Case tables (rows carry the case name) are resumed at case
  granularity: a case's rows are appended first, then the case is marked done in ``done.txt``; on reopening,
  rows of cases that were never marked done (interrupted mid-case) are dropped and recomputed.
- Step tables (training logs) are resumed at a position: ``keep_rows`` cuts them back to a checkpoint.
Every rewrite is atomic; appends are line-wise and a torn last line of ``done.txt`` is ignored.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medsamkit.core.atomic import write_json_atomic, write_text_atomic
from medsamkit.core.errors import InputError

Differences = Callable[[dict, dict], list[str]]


def plain(obj: Any) -> Any:
    """``obj`` as JSON would read it back (tuples -> lists, paths -> strings)."""
    return json.loads(json.dumps(obj, default=str))


def key_differences(keys: Sequence[str], defaults: Mapping[str, Any] | None = None) -> Differences:
    """A comparison that names the ``keys`` whose values differ between the stored and the new identity; a
    key missing from the stored one (a folder written before the key existed) reads as its ``defaults`` value."""
    defaults = dict(defaults or {})

    def differ(old: dict, new: dict) -> list[str]:
        return [k for k in keys if old.get(k, defaults.get(k)) != new.get(k)]

    return differ


def _csv_text(fields: Sequence[str], rows: Iterable[Mapping[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(fields), extrasaction="raise")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a CSV file as dicts of strings ([] when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


class RunStore:
    """A run folder: ``identity`` checked against ``config.json``, CSV ``tables`` ({name: columns}).

    ``keys`` are the identity fields that must match to resume (default: all of them); ``differences``
    replaces that rule when a run needs its own (e.g. a training schedule that may be extended).
    ``case_field`` names the column that holds the case name in case tables.
    """

    def __init__(self, out: str | Path, identity: Mapping[str, Any], tables: Mapping[str, Sequence[str]],
                 keys: Sequence[str] | None = None, differences: Differences | None = None,
                 case_field: str = "case", step_tables: Sequence[str] = ()) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: output must be a folder, a file of that name exists")
        self.out.mkdir(parents=True, exist_ok=True)
        self.tables = {name: list(fields) for name, fields in tables.items()}
        self.case_field = case_field
        self.step_tables = set(step_tables)
        self.identity = plain(dict(identity))
        self.previous = self._check_identity(keys, differences)
        self.done: set[str] = self._read_done()
        self._drop_unfinished()

    # --- identity ----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.out / "config.json"

    def _check_identity(self, keys: Sequence[str] | None, differences: Differences | None) -> dict | None:
        differ = differences or key_differences(list(keys) if keys is not None else list(self.identity))
        old = None
        if self.config_path.exists():
            try:
                old = json.loads(self.config_path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{self.config_path}: unreadable run configuration ({exc})") from None
            diff = differ(old, self.identity)
            if diff:
                raise InputError(
                    f"{self.out}: holds results of a different configuration ({', '.join(diff)} differ); "
                    "use another --out folder"
                )
        write_json_atomic(self.config_path, {**(old or {}), **self.identity})
        return old

    # --- cases ---------------------------------------------------------------------------------------
    @property
    def done_path(self) -> Path:
        return self.out / "done.txt"

    def _read_done(self) -> set[str]:
        if not self.done_path.exists():
            return set()
        text = self.done_path.read_text()
        lines = text.split("\n")
        complete = lines if text.endswith("\n") else lines[:-1]  # a torn last line is not a done case
        return {line for line in complete if line}

    def is_done(self, case: str) -> bool:
        """True when ``case`` finished in this run folder (its rows are all there)."""
        return case in self.done

    def _drop_unfinished(self) -> None:
        for name in self.tables:
            if name in self.step_tables:
                continue
            rows = self.rows(name)
            kept = [r for r in rows if r.get(self.case_field) in self.done]
            if len(kept) != len(rows) or (rows and list(rows[0]) != self.tables[name]):
                self._rewrite(name, kept)

    def add_case(self, case: str, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Append one finished case's rows ({table: rows}), then mark the case done (in that order)."""
        for name, table_rows in rows.items():
            self.append(name, table_rows)
        with self.done_path.open("a") as fh:
            fh.write(case + "\n")
            fh.flush()
        self.done.add(case)

    # --- tables --------------------------------------------------------------------------------------
    def path(self, table: str) -> Path:
        """The CSV file of ``table``."""
        if table not in self.tables:
            raise KeyError(f"unknown table {table!r}; this run has {sorted(self.tables)}")
        return self.out / f"{table}.csv"

    def rows(self, table: str) -> list[dict[str, str]]:
        """The rows of ``table`` as written (strings)."""
        return read_rows(self.path(table))

    def append(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows to ``table`` (the header is written with the first rows)."""
        path = self.path(table)
        if not rows and path.exists():
            return
        header = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as fh:
            fh.write(_csv_text(self.tables[table], rows, header))
            fh.flush()

    def keep_rows(self, table: str, keep: Callable[[dict[str, str]], bool]) -> None:
        """Rewrite ``table`` with only the rows for which ``keep(row)`` is true (resume to a checkpoint)."""
        if self.path(table).exists():
            self._rewrite(table, [r for r in self.rows(table) if keep(r)])

    def _rewrite(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        fields = self.tables[table]
        write_text_atomic(self.path(table), _csv_text(fields, [{f: r.get(f, "") for f in fields} for r in rows], True))
