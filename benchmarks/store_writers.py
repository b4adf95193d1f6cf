"""How data-parallel ranks should write their samples: one shared SQLite store, or one shard each merged at the end.

Each of ``--processes`` processes writes ``--samples`` sample records, one transaction
per sample as the harness does (``Store.add_sample``), either all into one store (WAL,
SQLite's file locking serialises the writers) or each into its own shard, which one
process then merges (``Store.merge_shard``). Prints seconds and records per second of
each, with the merge included. On a local disk both work; on a network filesystem
(where multi-node runs keep their results) SQLite's locking is unreliable, so shards
would be the choice even at equal speed.

    python benchmarks/store_writers.py --processes 2 --samples 2000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from tokenbench.store import SampleRecord, Store

RECORD = {"num_visual": 576, "grid": [24, 24], "tokens_per_layer": [144] * 32, "kept": {"vision": list(range(144))}}


def _write(path: str, rank: int, size: int, samples: int) -> None:
    store = Store(path)
    run = store.open_run({"benchmark": "store_writers"})
    for i in range(rank, samples * size, size):
        store.add_sample(run, SampleRecord(f"s{i}", i, "k", 1.0, "yes", "USER: <image> ... ASSISTANT:", None, RECORD))
    store.close()


def _timed(targets: list[str], samples: int) -> float:
    start = time.perf_counter()
    procs = [mp.Process(target=_write, args=(t, r, len(targets), samples)) for r, t in enumerate(targets)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--samples", type=int, default=2000, help="records per process")
    args = p.parse_args()
    n = args.processes * args.samples
    with tempfile.TemporaryDirectory() as d:
        shared = str(Path(d) / "shared.db")
        t_shared = _timed([shared] * args.processes, args.samples)
        shards = [str(Path(d) / f"rank-{r}.db") for r in range(args.processes)]
        t_write = _timed(shards, args.samples)
        start = time.perf_counter()
        with Store(Path(d) / "merged.db") as main_store:
            for s in shards:
                main_store.merge_shard(s)
        t_merge = time.perf_counter() - start
    print(f"{args.processes} processes x {args.samples} records, one transaction per record (local disk {d})")
    print(f"  one shared store:          {t_shared:7.2f} s  {n / t_shared:9.0f} records/s")
    print(f"  a shard each, then merged: {t_write + t_merge:7.2f} s  {n / (t_write + t_merge):9.0f} records/s (merge {t_merge:.2f} s)")
    print(f"  ratio shared / shards: {t_shared / (t_write + t_merge):.2f}")


if __name__ == "__main__":
    main()
