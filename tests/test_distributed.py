"""Data-parallel comparisons: two CPU processes (gloo) give the one-process table, a killed rank resumes.

The processes are started as users start them, ``accelerate launch ... -m tokenbench
compare`` (``torchrun`` where accelerate is not installed), on a saved tiny LLaVA and a
jsonl task; the tables are compared byte for byte in ``--format json``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenbench.distributed import StoreLock, World, shard_path, shard_paths
from tokenbench.errors import StoreError, UsageError
from tokenbench.store import SampleRecord, Store

N_SAMPLES = 12


@pytest.fixture(scope="module")
def task12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenbench.testing import write_jsonl_task

    return write_jsonl_task(tmp_path_factory.mktemp("task12"), n=N_SAMPLES, size=48)


def _args(model: Path, task: Path, store: Path, *more: str) -> list[str]:
    return [
        "compare", "--model", str(model), "--task", f"jsonl:{task}", "--strategies", "random,fastv,pooling", "--keep", "0.25",
        "--format", "json", "--per-sample", "--threads", "1", "--store", str(store), *more,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "tokenbench"]
    port = str(_free_port())
    if shutil.which("accelerate"):  # --multi_gpu is accelerate's torchrun launcher; with --cpu it starts one process only
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port, "-m", "tokenbench"]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", port, "-m", "tokenbench"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single(tiny_llava: Path, task12: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one-process table of the comparison every test below runs."""
    where = tmp_path_factory.mktemp("single")
    proc = _run([*_launch(1), *_args(tiny_llava, task12, where / "one.db")], where)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_two_processes_give_the_one_process_table(tiny_llava: Path, task12: Path, single: str, tmp_path: Path) -> None:
    proc = _run([*_launch(2), *_args(tiny_llava, task12, tmp_path / "two.db")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == single  # byte for byte: same runs, same records, same statistics
    assert "data-parallel: 2 processes" in proc.stderr
    assert proc.stderr.count("samples (100 %), elapsed") == 1  # rank 0 alone reports; it did half of each run
    assert "run 1 of 4 (baseline @ all): 6 of 24 samples" in proc.stderr
    assert shard_paths(tmp_path / "two.db") == []  # merged, then removed
    with Store(tmp_path / "two.db") as store:
        assert sorted(run.n_samples for run in store.runs()) == [N_SAMPLES] * 4


def _pids_holding(path: Path) -> list[int]:
    """The processes that have ``path`` open (Linux /proc)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the rank's process through /proc")
def test_a_rank_killed_mid_run_resumes_to_the_same_table(tiny_llava: Path, task12: Path, single: str, tmp_path: Path) -> None:
    store = tmp_path / "killed.db"
    shard = shard_path(store, 1).resolve()
    args = _args(tiny_llava, task12, store, "--batch-size", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([*_launch(2), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished_before_kill = 0
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if shard.exists():
                with Store(shard) as s:
                    finished_before_kill = sum(run.n_samples for run in s.runs())
                if finished_before_kill >= 3:
                    pids = _pids_holding(shard)
                    assert pids, "rank 1 holds its shard open"
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert finished_before_kill >= 3, f"rank 1 never finished 3 samples: {err[-2000:]}"
    assert proc.returncode != 0 and out == ""  # the launcher stops rank 0 too; no table
    assert shard_path(store, 1) in shard_paths(store)  # what the killed rank finished is in its shard
    # resume with another world size: one process merges the shards and computes only the rest
    again = _run([*_launch(1), *args], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == single
    assert "resumed" in again.stderr and shard_paths(store) == []


def test_more_processes_than_samples_is_one_line(tiny_llava: Path, jsonl_task: Path, tmp_path: Path) -> None:
    from tokenbench.compare import CompareRequest, run_comparison
    from tokenbench.harness import StrategySpec
    from tokenbench.registry import get_registry

    request = CompareRequest([StrategySpec("random")], [], model=str(tiny_llava), task=f"jsonl:{jsonl_task}", store=str(tmp_path / "r.db"))
    with pytest.raises(UsageError, match=r"^7 processes for 6 samples: start at most 6 \(--num_processes\), or raise --limit$"):
        run_comparison(request, get_registry(), world=World(rank=0, size=7))


def test_a_second_comparison_on_a_busy_store_is_refused(tiny_llava: Path, jsonl_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenbench.cli import main

    store = tmp_path / "busy.db"
    with Store(store) as s:  # a finished sample of an earlier comparison
        s.add_sample(s.open_run({"earlier": True}), SampleRecord("x", 0, None, 1.0, "y", "p", None, {}))
    other = StoreLock(store)
    other.acquire("tokenbench compare, 1 process, task shapes")
    try:
        code = main(["compare", "--model", str(tiny_llava), "--task", f"jsonl:{jsonl_task}", "--strategies", "random", "--store", str(store), "--quiet"])
    finally:
        other.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"tokenbench: error: {store}: another comparison is running on this store (pid {os.getpid()} on ")
    assert err[0].endswith("tokenbench compare, 1 process, task shapes); wait for it to finish, or pass another --store")
    with Store(store) as s:  # nothing lost
        assert [r.n_samples for r in s.runs()] == [1]


def test_a_store_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"a-file/r\.db: cannot write the results store there \(.*\); pass --store PATH on a writable disk$"):
        Store(blocker / "r.db")
    with pytest.raises(StoreError, match=r"cannot write the results store there"):
        StoreLock(blocker / "r.db").acquire("x")
    if os.geteuid() != 0:  # root writes through permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(StoreError, match=r"ro/r\.db: cannot write the results store there"):
            Store(ro / "r.db")


def test_merging_a_shard_keeps_successes_and_replaces_errors(tmp_path: Path) -> None:
    main, shard = Store(tmp_path / "m.db"), Store(tmp_path / "s.db")
    run = main.open_run({"k": 1})
    assert shard.open_run({"k": 1}) == run
    main.add_sample(run, SampleRecord("a", 0, None, 1.0, "yes", "p", None, {}))
    main.add_sample(run, SampleRecord("b", 1, None, None, None, None, "boom", {}))
    shard.add_sample(run, SampleRecord("a", 0, None, 0.0, "no", "p", None, {}))  # never overwrites a success
    shard.add_sample(run, SampleRecord("b", 1, None, 1.0, "yes", "p", None, {}))  # a rerun's success replaces the error
    shard.add_sample(run, SampleRecord("c", 2, None, 1.0, "yes", "p", None, {}))
    shard.close()
    assert main.merge_shard(tmp_path / "s.db") == 2
    got = {r.sample_id: (r.score, r.error) for r in main.samples(run)}
    assert got == {"a": (1.0, None), "b": (1.0, None), "c": (1.0, None)}


def test_world_from_the_launchers_environment() -> None:
    w = World.from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.device("cuda"), w.device("cuda:0")) == (3, 8, 1, 4, "cuda:1", "cuda:0")
    assert w.mine(20) == [3, 11, 19]
    # every sample goes to exactly one rank, whatever the world size
    assert sorted(i for r in range(8) for i in World(r, 8).mine(20)) == list(range(20))
    with pytest.raises(UsageError, match="RANK=2 and WORLD_SIZE=2"):
        World.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="WORLD_SIZE='two' is not an integer"):
        World.from_env({"WORLD_SIZE": "two"})
