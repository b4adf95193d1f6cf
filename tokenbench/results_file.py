"""Results files: a store's runs as versioned, diffable text (gzipped JSON lines).

SQLite is the working store (``tokenbench compare`` writes it sample by sample); a
results file is what gets published and committed: ``tokenbench runs --export
FILE.jsonl.gz`` writes one, ``tokenbench leaderboard --store FILE.jsonl.gz`` renders
from one, ``tokenbench runs --store work.db --import FILE.jsonl.gz`` brings one back into
a working store (to resume or extend it). Nothing a store holds is lost on the way.

Format, version 1: UTF-8 JSON lines, one JSON object per line, compressed with gzip
without a file name and with mtime 0, so that an unchanged store exports to identical
bytes (see ``git config diff.gzip.textconv "gzip -dc"`` for readable diffs). Line 1 is
``{"format":"tokenbench-results","version":1}``; then, for each run in the store's order
(creation time, then run id), in this key order:

- ``{"type":"run","run_id":…,"created":…,"updated":…,"config":{…}}``
- ``{"type":"measurement","run_id":…,"name":…,"value":…}``, one per measurement, by name
- ``{"type":"prompt","id":N,"text":…}`` before the first sample that uses that prompt
  text; each distinct prompt is stored once for the whole file (ids 0, 1, 2, … in order
  of first use)
- ``{"type":"sample","run_id":…,"sample_id":…,"position":…,"kind":…,"score":…,
  "prediction":…,"prompt":N|null,"error":…,"record":{…}}``, in the store's order
  (position, then sample id)

Keys inside ``config``, ``value`` and ``record`` are sorted; numbers are written as
Python writes them (the shortest text that reads back as the same float; NaN and
Infinity as in the store). A line that breaks these rules is refused with a
:class:`~tokenbench.errors.StoreError` naming the file and the line.

>>> from tokenbench.store import RunDump, SampleRecord
>>> run = RunDump("5a59fe6b23fda558", {"strategy": "baseline"}, 1.5, 2.5, {"flops": {"n": 1}},
...               [SampleRecord("s1", 0, "count", 1.0, "two", "USER: how many?", None, {"kept": [0, 1]})])
>>> for line in export_lines([run]):
...     print(line)
{"format":"tokenbench-results","version":1}
{"type":"run","run_id":"5a59fe6b23fda558","created":1.5,"updated":2.5,"config":{"strategy":"baseline"}}
{"type":"measurement","run_id":"5a59fe6b23fda558","name":"flops","value":{"n":1}}
{"type":"prompt","id":0,"text":"USER: how many?"}
{"type":"sample","run_id":"5a59fe6b23fda558","sample_id":"s1","position":0,"kind":"count","score":1.0,"prediction":"two","prompt":0,"error":null,"record":{"kept":[0,1]}}
>>> parse_lines(export_lines([run]), "example.jsonl.gz") == [run]
True
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenbench.errors import StoreError
from tokenbench.store import RunDump, SampleRecord, Store

FORMAT = "tokenbench-results"
VERSION = 1
SUFFIX = ".jsonl.gz"

_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))
#: every line type's fields after "type", in the order they are written, with the JSON types they may hold
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "run": {"run_id": (str,), "created": _NUMBER, "updated": _NUMBER, "config": (dict,)},
    "measurement": {"run_id": (str,), "name": (str,), "value": (object,)},
    "prompt": {"id": (int,), "text": (str,)},
    "sample": {
        "run_id": (str,),
        "sample_id": (str,),
        "position": (int,),
        "kind": _OPTIONAL_STR,
        "score": (int, float, type(None)),
        "prediction": _OPTIONAL_STR,
        "prompt": (int, type(None)),
        "error": _OPTIONAL_STR,
        "record": (dict,),
    },
}


def is_results_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a results file (by its extension) rather than a SQLite store."""
    return os.fspath(path).endswith(SUFFIX)


# -- writing -----------------------------------------------------------------------------
def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _line(line_type: str, /, **fields: Any) -> str:
    """One line: "type" first, then the fields in the format's order (nested keys sorted)."""
    assert fields.keys() == _FIELDS[line_type].keys(), (line_type, sorted(fields))
    ordered = {"type": line_type, **{k: fields[k] for k in _FIELDS[line_type]}}
    return "{" + ",".join(f"{_json(k)}:{_json(v)}" for k, v in ordered.items()) + "}"


def export_lines(runs: Iterable[RunDump]) -> Iterator[str]:
    """The lines of a results file holding ``runs`` (without line ends)."""
    yield _json({"format": FORMAT, "version": VERSION})
    prompts: dict[str, int] = {}
    for run in runs:
        yield _line("run", run_id=run.run_id, created=run.created, updated=run.updated, config=run.config)
        for name in sorted(run.measurements):
            yield _line("measurement", run_id=run.run_id, name=name, value=run.measurements[name])
        for rec in run.samples:
            if rec.prompt is not None and rec.prompt not in prompts:
                prompts[rec.prompt] = len(prompts)
                yield _line("prompt", id=prompts[rec.prompt], text=rec.prompt)
            yield _line(
                "sample",
                run_id=run.run_id,
                sample_id=rec.sample_id,
                position=rec.position,
                kind=rec.kind,
                score=rec.score,
                prediction=rec.prediction,
                prompt=None if rec.prompt is None else prompts[rec.prompt],
                error=rec.error,
                record=rec.record,
            )


def write_results(store: Store, path: str | os.PathLike[str]) -> int:
    """Write every run of ``store`` to the results file ``path`` (replaced whole, never left
    half-written); returns the number of sample records written."""
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    try:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
            io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as text,
        ):
            for line in export_lines(store.dump_runs()):
                n += line.startswith('{"type":"sample"')
                text.write(line + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


# -- reading -----------------------------------------------------------------------------
def _check_fields(obj: dict[str, Any], where: str) -> str:
    """The line's type, once its fields are exactly the ones its type has, with the right JSON types."""
    kind = obj.get("type")
    if kind not in _FIELDS:
        raise StoreError(f"{where}: unknown line type {kind!r} (expected one of {', '.join(_FIELDS)})")
    spec = _FIELDS[kind]
    missing = [k for k in spec if k not in obj]
    extra = sorted(k for k in obj if k not in spec and k != "type")
    if missing or extra:
        what = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(extra)}" if extra else "") if part)
        raise StoreError(f"{where}: {kind} line: {what}")
    for key, types in spec.items():
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types != (object,)):  # JSON true is no number
            names = [_TYPE_NAMES[t] for t in types if not (t is int and float in types)]  # int or float: "a number"
            raise StoreError(f"{where}: {kind} line: {key} is {_json(value)[:40]}, expected {' or '.join(names)}")
    return str(kind)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", type(None): "null", object: "anything"}


def _check_header(text: str, where: str) -> None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or set(obj) != {"format", "version"}:
        raise StoreError(f"{where}: not a tokenbench results file (line 1 must be {_json({'format': FORMAT, 'version': VERSION})})")
    version = obj["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"{where}: unknown results file version {_json(version)}")
    if version > VERSION:
        raise StoreError(f"{where}: written by a newer tokenbench (results file version {version}, this version reads up to {VERSION}); upgrade tokenbench")


def parse_lines(lines: Iterable[str], source: str) -> list[RunDump]:
    """The runs of a results file's lines, in file order; ``source`` names the file in errors."""
    runs: dict[str, RunDump] = {}
    first_seen: dict[str, int] = {}
    prompts: dict[int, str] = {}
    number = 0
    for number, text in enumerate(lines, 1):
        where = f"{source}: line {number}"
        if number == 1:
            _check_header(text, where)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: expected a JSON object, got {_json(obj)[:40]}")
        kind = _check_fields(obj, where)
        label = {
            "run": f"run {obj.get('run_id')}",
            "prompt": f"prompt {obj.get('id')}",
            "measurement": f"measurement {obj.get('name')} of run {obj.get('run_id')}",
            "sample": f"sample {obj.get('sample_id')} of run {obj.get('run_id')}",
        }[kind]
        if label in first_seen:
            raise StoreError(f"{where}: {label} appears twice (first on line {first_seen[label]})")
        first_seen[label] = number
        if kind == "run":
            runs[obj["run_id"]] = RunDump(obj["run_id"], obj["config"], obj["created"], obj["updated"], {}, [])
            continue
        if kind == "prompt":
            prompts[obj["id"]] = obj["text"]
            continue
        run = runs.get(obj["run_id"])
        if run is None:
            raise StoreError(f"{where}: {kind} of run {obj['run_id']}, which no earlier line declares")
        if kind == "measurement":
            run.measurements[obj["name"]] = obj["value"]
            continue
        if obj["prompt"] is not None and obj["prompt"] not in prompts:
            raise StoreError(f"{where}: sample {obj['sample_id']}: prompt {obj['prompt']} is not defined on an earlier line")
        run.samples.append(
            SampleRecord(
                obj["sample_id"],
                obj["position"],
                obj["kind"],
                obj["score"],
                obj["prediction"],
                None if obj["prompt"] is None else prompts[obj["prompt"]],
                obj["error"],
                obj["record"],
            )
        )
    if number == 0:
        raise StoreError(f"{source}: line 1: empty; not a tokenbench results file")
    return list(runs.values())


def read_results(path: str | os.PathLike[str]) -> list[RunDump]:
    """The runs stored in the results file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"{p}: no results file there; write one with 'tokenbench runs --export {p}'")
    try:
        data = gzip.decompress(p.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise StoreError(f"{p}: not gzip-compressed, or cut short ({exc}); a results file is written by 'tokenbench runs --export'") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise StoreError(f"{p}: line {line}: not UTF-8 ({exc.reason})") from None
    lines = text.split("\n")
    return parse_lines(lines[:-1] if len(lines) > 1 and lines[-1] == "" else lines, str(p))


def open_results(path: str | os.PathLike[str]) -> Store:
    """A :class:`Store` of ``path``: a results file read into memory (its ``path`` names the
    file, for messages; nothing is written back), or else the SQLite store itself."""
    if not is_results_file(path):
        return Store(Path(path))
    runs = read_results(path)
    store = Store(":memory:")
    store.restore_runs(runs)
    store.path = Path(path)
    return store
