"""Data-parallel comparisons: the same ``compare`` over several processes and machines.

``accelerate launch -m tokenbench compare ...`` and ``torchrun -m tokenbench compare ...``
(any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) start one process per device. Each process:

* takes the samples whose position ``i`` in the task's (limited) sample list has
  ``i % WORLD_SIZE == RANK``: a deterministic split that does not depend on what is
  already done, so a rerun with any world size leaves no sample to nobody;
* writes its finished samples to its own shard, ``STORE.shards/rank-RRRRR.db``, one
  SQLite file with one writer (SQLite's locking is not safe on network filesystems,
  which multi-node runs share; one writer per file needs no locking at all);
* reads what is already done from the main store, which only rank 0 writes.

Rank 0 holds the store's lock (``STORE.lock``, see :class:`StoreLock`) for the whole
comparison, merges any shard a killed run left behind before the others read the main
store, and after the last rank's accuracy loop (a barrier) merges every shard into the
main store, deletes the shards, runs the timed loop (``--timing-samples``) on its own
device while no accuracy loop runs anywhere, and prints the table. The other ranks print
nothing and exit 0. Synchronisation is two or three ``torch.distributed`` barriers over
gloo (CPU, TCP), whatever the devices; nothing else crosses processes.

A killed rank loses only its unfinished batch: its shard keeps every finished sample,
and the next run of the same command, with any world size, merges it and resumes.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tokenbench.errors import StoreError, UsageError
from tokenbench.store import Store, unwritable

__all__ = ["StoreLock", "World", "merge_shards", "shard_dir", "shard_path", "shard_paths"]

#: how long a barrier waits for the slowest rank (a rank's accuracy loop can take hours)
BARRIER_TIMEOUT = datetime.timedelta(hours=72)
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one comparison.

    >>> w = World.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    >>> w.rank, w.size, w.is_main, w.mine(5), w.device("cuda"), w.device("cpu")
    (1, 2, False, [1, 3], 'cuda:1', 'cpu')
    >>> World.from_env({}).mine(3)
    [0, 1, 2]
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """The world a launcher describes in ``env`` (default ``os.environ``); one process when it describes none."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for name in _ENV:
            text = env.get(name)
            if text is None:
                continue
            try:
                values[name] = int(text)
            except ValueError:
                raise UsageError(f"environment variable {name}={text!r} is not an integer (set by the launcher: accelerate, torchrun)") from None
        size = values.get("WORLD_SIZE", 1)
        rank = values.get("RANK", 0)
        if size < 1 or not 0 <= rank < size:
            raise UsageError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process group (0 <= RANK < WORLD_SIZE)")
        local_size = values.get("LOCAL_WORLD_SIZE", size)
        return cls(rank, size, values.get("LOCAL_RANK", rank % max(local_size, 1)), local_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def mine(self, n: int) -> list[int]:
        """The positions among ``n`` samples that this process evaluates."""
        return list(range(self.rank, n, self.size))

    def device(self, device: str) -> str:
        """``device`` for this process: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` when distributed."""
        return f"cuda:{self.local_rank}" if self.distributed and device == "cuda" else device

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op for one process)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise UsageError(f"WORLD_SIZE={self.size} but {' and '.join(missing)} unset: start the processes with accelerate launch or torchrun")
            dist.init_process_group("gloo", rank=self.rank, world_size=self.size, timeout=BARRIER_TIMEOUT)
        dist.barrier()

    def close(self) -> None:
        """Leave the process group, if this process joined one."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def shard_dir(store: str | Path) -> Path:
    """Where the ranks of a data-parallel comparison write their shards: ``STORE.shards``."""
    return Path(f"{store}.shards")


def shard_path(store: str | Path, rank: int) -> Path:
    """Rank ``rank``'s shard of ``store``.

    >>> shard_path("results.db", 3).as_posix()
    'results.db.shards/rank-00003.db'
    """
    return shard_dir(store) / f"rank-{rank:05d}.db"


def shard_paths(store: str | Path) -> list[Path]:
    """Every shard of ``store`` there is, finished or left by a killed run."""
    folder = shard_dir(store)
    return sorted(folder.glob("rank-*.db")) if folder.is_dir() else []


class StoreLock:
    """An exclusive lock on a store for one comparison (``STORE.lock``, an advisory ``flock``).

    A second comparison on the same store, started while the first runs, fails in one
    line naming the process that holds it; the lock goes with its process, however that
    process ends. Where ``fcntl`` is missing (Windows) there is no lock.
    """

    def __init__(self, store: str | Path) -> None:
        self.path = Path(f"{store}.lock")
        self._fh: IO[str] | None = None

    def acquire(self, what: str) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole comparison
        except OSError as exc:
            raise StoreError(unwritable(self.path, exc)) from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = _holder(fh.read())
            fh.close()
            raise StoreError(
                f"{self.path.with_suffix('')}: another comparison is running on this store ({holder}); wait for it to finish, or pass another --store"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "what": what}))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['what']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no description"


def merge_shards(store: Store, path: str | Path) -> int:
    """Merge every shard of the store at ``path`` into ``store`` (open on it), deleting each once merged; returns the samples copied."""
    copied = 0
    for shard in shard_paths(path):
        copied += store.merge_shard(shard)
        remove_shard(shard)
    return copied


def remove_shard(path: Path) -> None:
    """Delete a merged shard and SQLite's side files; the folder too once empty."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # other shards are still there
