"""The results store: an embedded SQLite database that loses nothing.

One row per (run, sample), written in its own transaction as each sample finishes
(WAL mode), so an interrupted run resumes where it stopped. A run is keyed by a hash
of its whole effective configuration; any change gives a new run. Everything is JSON
and plain columns: nothing is ever unpickled from a store.

>>> import tempfile, os
>>> with tempfile.TemporaryDirectory() as d:
...     store = Store(os.path.join(d, "r.db"))
...     run = store.open_run({"strategy": "random", "budget": "64"})
...     store.add_sample(run, SampleRecord("s1", 0, "count", 1.0, "two", "USER: ...", None, {}))
...     [r.sample_id for r in store.samples(run)]
['s1']
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenbench.errors import StoreError

SCHEMA_VERSION = 1
DEFAULT_STORE = "tokenbench-results.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    sample_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT,
    score REAL,
    prediction TEXT,
    prompt TEXT,
    error TEXT,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, sample_id)
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


@dataclass(frozen=True)
class SampleRecord:
    sample_id: str
    position: int
    kind: str | None
    score: float | None
    prediction: str | None
    prompt: str | None
    error: str | None
    record: dict[str, Any]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    config: dict[str, Any]
    created: float
    n_samples: int
    n_errors: int


@dataclass(frozen=True)
class RunDump:
    """Everything a store holds about one run, as :meth:`Store.dump_runs` gives it and
    :meth:`Store.restore_runs` takes it (what a results file carries)."""

    run_id: str
    config: dict[str, Any]
    created: float
    updated: float
    measurements: dict[str, Any]
    samples: list[SampleRecord]


def run_key(config: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a configuration (canonical JSON).

    >>> run_key({"a": 1, "b": [1, 2]}) == run_key({"b": [1, 2], "a": 1})
    True
    """
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except OSError as exc:  # the folder cannot be made
            raise StoreError(unwritable(self.path, exc)) from None
        except sqlite3.OperationalError as exc:  # cannot open or write: a read-only disk or folder
            if _writable(self.path):
                raise StoreError(f"{self.path}: not a tokenbench results store ({exc})") from None
            raise StoreError(unwritable(self.path, exc)) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a tokenbench results store ({exc})") from None
        self._check_schema()

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer tokenbench (store schema {version}, this version reads up to "
                f"{SCHEMA_VERSION}); upgrade tokenbench or use another --store"
            )
        if version < SCHEMA_VERSION:  # pragma: no cover - no older schema exists yet
            raise StoreError(f"{self.path}: store schema {version} is too old to migrate; use a new --store")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ------------------------------------------------------------------------
    def open_run(self, config: dict[str, Any]) -> str:
        """The run id for ``config``, creating the run if it is new."""
        run_id = run_key(config)
        now = time.time()
        self._db.execute(
            "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?)",
            (run_id, _config_json(config), now, now),
        )
        return run_id

    def runs(self) -> list[RunInfo]:
        rows = self._db.execute(
            "SELECT r.run_id, r.config, r.created, COUNT(s.sample_id), COUNT(s.error) "
            "FROM runs r LEFT JOIN samples s ON s.run_id = r.run_id GROUP BY r.run_id ORDER BY r.created, r.run_id"
        ).fetchall()
        return [RunInfo(r[0], json.loads(r[1]), r[2], r[3], r[4]) for r in rows]

    def run_config(self, run_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT config FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no run {run_id!r}")
        return dict(json.loads(row[0]))

    # -- samples ---------------------------------------------------------------------
    def add_sample(self, run_id: str, rec: SampleRecord) -> None:
        """Write one finished sample in its own transaction (replacing an earlier error)."""
        self.add_samples(run_id, [rec])

    def add_samples(self, run_id: str, recs: Sequence[SampleRecord]) -> None:
        """Write finished samples (a batch) in one transaction: all of them or, if the process dies, none."""
        if not recs:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [_sample_row(run_id, r) for r in recs])
            self._db.execute("UPDATE runs SET updated=? WHERE run_id=?", (time.time(), run_id))

    def done_ids(self, run_id: str, *, include_errors: bool = False) -> set[str]:
        sql = "SELECT sample_id FROM samples WHERE run_id=?" + ("" if include_errors else " AND error IS NULL")
        return {r[0] for r in self._db.execute(sql, (run_id,))}

    def samples(self, run_id: str, ids: list[str] | None = None) -> list[SampleRecord]:
        rows = self._db.execute(
            "SELECT sample_id, position, kind, score, prediction, prompt, error, record FROM samples WHERE run_id=? ORDER BY position, sample_id",
            (run_id,),
        ).fetchall()
        recs = [SampleRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]
        if ids is not None:
            wanted = set(ids)
            recs = [r for r in recs if r.sample_id in wanted]
        return recs

    def iter_all(self) -> Iterator[tuple[str, SampleRecord]]:
        for run in self.runs():
            for rec in self.samples(run.run_id):
                yield run.run_id, rec

    # -- measurements ----------------------------------------------------------------
    def put_measurement(self, run_id: str, name: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?)", (run_id, name, _value_json(value)))

    def put_meta(self, key: str, value: Any) -> None:
        """A store-wide value (JSON), not tied to a run: e.g. a model's traced multiply-adds (``macs:<model key>``)."""
        if key == "schema_version":
            raise ValueError("schema_version is the store's own")
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _value_json(value)))

    def meta(self, key: str) -> Any:
        """The value :meth:`put_meta` wrote under ``key``, or ``None``."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def measurement(self, run_id: str, name: str) -> Any:
        row = self._db.execute("SELECT value FROM measurements WHERE run_id=? AND name=?", (run_id, name)).fetchone()
        return None if row is None else json.loads(row[0])

    def measurements(self, run_id: str, prefix: str = "") -> dict[str, Any]:
        """Every measurement of a run whose name starts with ``prefix``, by name (sorted)."""
        rows = self._db.execute("SELECT name, value FROM measurements WHERE run_id=? ORDER BY name", (run_id,)).fetchall()
        return {name: json.loads(value) for name, value in rows if name.startswith(prefix)}

    # -- shards of a data-parallel run (tokenbench.distributed) ---------------------------
    def merge_shard(self, shard: str | Path) -> int:
        """Copy a shard's runs, samples and measurements into this store, in one transaction; returns the samples copied.

        A sample this store already holds without an error is kept; one it holds as an
        error is replaced (as a rerun's :meth:`add_sample` does).
        """
        self._db.execute("ATTACH DATABASE ? AS shard", (str(shard),))
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("INSERT OR IGNORE INTO runs SELECT * FROM shard.runs")
                self._db.execute(
                    "UPDATE runs SET updated = max(updated, (SELECT s.updated FROM shard.runs s WHERE s.run_id = runs.run_id)) "
                    "WHERE run_id IN (SELECT run_id FROM shard.runs)"
                )
                before = self._db.total_changes
                self._db.execute(
                    "INSERT INTO samples SELECT * FROM shard.samples WHERE true ON CONFLICT(run_id, sample_id) DO UPDATE SET "
                    "position=excluded.position, kind=excluded.kind, score=excluded.score, prediction=excluded.prediction, "
                    "prompt=excluded.prompt, error=excluded.error, record=excluded.record WHERE samples.error IS NOT NULL"
                )
                copied = self._db.total_changes - before
                self._db.execute("INSERT OR IGNORE INTO measurements SELECT * FROM shard.measurements")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{shard}: cannot merge this shard into {self.path} ({exc}); move it aside and rerun") from None
        finally:
            self._db.execute("DETACH DATABASE shard")
        return copied

    # -- whole runs ------------------------------------------------------------------
    def dump_runs(self) -> Iterator[RunDump]:
        """Every run with its times, measurements and samples, in :meth:`runs` order."""
        for info in self.runs():
            created, updated = self._db.execute("SELECT created, updated FROM runs WHERE run_id=?", (info.run_id,)).fetchone()
            yield RunDump(info.run_id, info.config, created, updated, self.measurements(info.run_id), self.samples(info.run_id))

    def restore_runs(self, dumps: Iterable[RunDump]) -> None:
        """Write runs as they were recorded elsewhere (ids, times and all), in one transaction.

        Refuses, writing nothing, when this store already holds one of the runs.
        """
        with self._db:
            self._db.execute("BEGIN")
            for d in dumps:
                if self._db.execute("SELECT 1 FROM runs WHERE run_id=?", (d.run_id,)).fetchone():
                    raise StoreError(f"{self.path}: already holds run {d.run_id}; restore into a store without it")
                try:
                    self._db.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (d.run_id, _config_json(d.config), d.created, d.updated))
                    self._db.executemany(
                        "INSERT INTO measurements VALUES (?, ?, ?)", [(d.run_id, name, _value_json(value)) for name, value in d.measurements.items()]
                    )
                    self._db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [_sample_row(d.run_id, r) for r in d.samples])
                except sqlite3.IntegrityError as exc:
                    raise StoreError(f"{self.path}: cannot restore run {d.run_id} ({exc})") from None


def _writable(path: Path) -> bool:
    """Whether ``path`` (an existing file, else its folder) can be written by this process."""
    import os

    return os.access(path if path.exists() else path.parent, os.W_OK)


def unwritable(path: Path, exc: BaseException) -> str:
    """The one line for a store (or its lock) that cannot be written where it is."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return f"{path}: cannot write the results store there ({reason}); pass --store PATH on a writable disk"


def _config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _value_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _sample_row(run_id: str, rec: SampleRecord) -> tuple[Any, ...]:
    """The ``samples`` table's columns, in order."""
    return (run_id, rec.sample_id, rec.position, rec.kind, rec.score, rec.prediction, rec.prompt, rec.error, json.dumps(rec.record, sort_keys=True))
