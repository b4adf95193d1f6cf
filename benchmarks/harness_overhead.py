"""How much does tokenbench's harness cost per sample, against a bare ``transformers`` loop?

The same model object, the same samples, the same batches, the same greedy decoding
(``max_new_tokens`` of the task), timed in the same process, start-up excluded:

- **bare**: what a user would write without tokenbench: build the prompt with the
  processor's chat template, ``processor(images=..., text=..., padding=True)``,
  ``model.generate(**inputs, do_sample=False, max_new_tokens=...)`` and
  ``tokenizer.batch_decode``;
- **tokenbench**: :func:`tokenbench.harness.evaluate` (what ``tokenbench compare`` runs
  for every strategy and budget): prompts, the adapter's layer-by-layer prefill and
  decode, the per-sample records, the score, and the store writes, into a fresh SQLite
  store each round. ``baseline`` (no reduction) and ``random`` at 100% (a vision-stage
  selection that keeps every token) are timed.

Rounds interleave the loops (bare, baseline, random, bare, ...), so drift spreads over
all of them; each loop's rate is samples / second over the whole pass, and the ratio is
the median over rounds of tokenbench's rate / the bare rate of the same round (target:
>= 0.95). The predictions of the bare loop and of ``baseline`` must be identical (the
script says so when they are not).

Models:

- ``reference``: the embedded reference model on the ``shapes`` task (144 visual tokens);
- ``llava576``: a random-weight LLaVA architecture (CLIP 336 px / 14 px patches: 576
  visual tokens; Llama LM, dimensions below) on drawn images with long questions.

    python benchmarks/harness_overhead.py                       # both models, batch 1 and 8
    python benchmarks/harness_overhead.py --model reference --batch 8 --samples 200
    python benchmarks/harness_overhead.py --profile             # + where tokenbench's time goes
    python benchmarks/harness_overhead.py --command --startup   # + the whole command, and its start-up
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prefill_speedup import Dims, build_llava, cpu_model, synthetic_samples  # noqa: E402

#: the 576-token LLaVA architecture: a small Llama LM behind a CLIP-336/14 tower
LLAVA576 = Dims(hidden=512, layers=6, heads=8, kv_heads=8, ffn=1376, vocab=512, image=336, patch=14, v_hidden=256, v_ffn=1024, v_layers=2, v_heads=4)


def load_reference(n: int) -> tuple[Any, Any, list[Any], str]:
    """The embedded model's adapter, the ``shapes`` task and ``n`` of its samples (stratified, as ``--limit``)."""
    from tokenbench.adapters.llava import LlavaAdapter
    from tokenbench.registry import get_registry
    from tokenbench.task import stratified_subset

    reg = get_registry()
    path = reg.load("models", "reference").location()
    adapter = LlavaAdapter.load(path)
    task = reg.load("tasks", "shapes")()
    samples = stratified_subset(list(task.load()), n, 0)
    return adapter, task, samples, "reference model (2.58 M parameters, 144 visual tokens), shapes task"


def load_llava576(n: int) -> tuple[Any, Any, list[Any], str]:
    """A random-weight 576-token LLaVA, and a task over ``n`` drawn images with long questions."""
    from tokenbench.adapters.llava import LlavaAdapter
    from tokenbench.answers import exact_match
    from tokenbench.task import Task

    d = LLAVA576
    model, proc = build_llava(d)
    adapter = LlavaAdapter(model, proc, "benchmark/llava576-random", "cpu", "float32")
    samples = synthetic_samples(n, d.image)

    class Drawn(Task):
        name = "drawn"
        max_new_tokens = 8

        def load(self) -> Sequence[Any]:
            return samples

        def score(self, sample: Any, prediction: str) -> float:
            return exact_match(prediction, sample.answers)

    desc = (
        f"LLaVA architecture, random weights: CLIP {d.image} px / {d.patch} px ({(d.image // d.patch) ** 2} visual tokens, {d.v_layers} layers x {d.v_hidden}); "
        f"Llama LM hidden {d.hidden}, {d.layers} layers, FFN {d.ffn}; {Drawn.max_new_tokens} new tokens"
    )
    return adapter, Drawn(), samples, desc


def bare_loop(adapter: Any, task: Any, samples: Sequence[Any], batch: int) -> list[str]:
    """Processor + ``model.generate`` + decode, in batches: no tokenbench code on the timed path."""
    model, proc = adapter.model, adapter.processor
    tok = proc.tokenizer
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            texts = [
                proc.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task.prompt(s, adapter.family)}]}], add_generation_prompt=True
                )
                for s in chunk
            ]
            inputs = proc(images=[s.load_image() for s in chunk], text=texts, return_tensors="pt", padding=True)
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=task.max_new_tokens, pad_token_id=tok.pad_token_id)
            out.extend(t.strip() for t in tok.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def tokenbench_loop(adapter: Any, task: Any, samples: Sequence[Any], batch: int, strategy: Any, budget: Any) -> list[str]:
    """:func:`tokenbench.harness.evaluate` into a fresh store; the stored predictions in sample order."""
    from tokenbench.harness import evaluate
    from tokenbench.store import Store

    with tempfile.TemporaryDirectory() as tmp, Store(os.path.join(tmp, "bench.db")) as store:
        run_id = store.open_run({"strategy": strategy.name, "budget": budget.label})
        evaluate(adapter, task, samples, strategy, budget, store, run_id, batch_size=batch)
        records = store.samples(run_id, [s.id for s in samples])
    return [r.prediction or "" for r in records]


def timed(fn: Callable[[], list[str]]) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    preds = fn()
    return time.perf_counter() - t0, preds


def measure(adapter: Any, task: Any, samples: Sequence[Any], batch: int, rounds: int) -> dict[str, Any]:
    from tokenbench.budget import FULL, Budget
    from tokenbench.registry import get_registry

    reg = get_registry()
    loops: dict[str, Callable[[], list[str]]] = {
        "bare": lambda: bare_loop(adapter, task, samples, batch),
        "baseline": lambda: tokenbench_loop(adapter, task, samples, batch, reg.load("strategies", "baseline")(), FULL),
        "random@100%": lambda: tokenbench_loop(adapter, task, samples, batch, reg.load("strategies", "random")(), Budget("fraction", 1.0)),
    }
    for fn in loops.values():  # warm-up: allocator, lazy imports, chat-template compilation
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in loops}
    preds: dict[str, list[str]] = {}
    for r in range(rounds):
        names = list(loops)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotate the order from round to round
        for name in names:
            s, preds[name] = timed(loops[name])
            seconds[name].append(s)
    n = len(samples)
    out: dict[str, Any] = {"batch": batch, "n": n, "rounds": rounds, "same_predictions": preds["bare"] == preds["baseline"]}
    for name, secs in seconds.items():
        out[name] = {"rate": n / statistics.median(secs), "rates": [n / s for s in secs]}
        if name != "bare":
            out[name]["ratio"] = statistics.median(b / t for b, t in zip(seconds["bare"], secs))
    out["mismatches"] = sum(a != b for a, b in zip(preds["bare"], preds["baseline"]))
    return out


def bare_rate_on(adapter: Any, task: Any, n: int, batch: int, rounds: int) -> float:
    """The bare loop's samples / second on the first ``n`` questions that ``--limit n`` picks (median of ``rounds``)."""
    from tokenbench.task import stratified_subset

    samples = stratified_subset(list(task.load()), n, 0)
    bare_loop(adapter, task, samples[:batch], batch)
    return statistics.median(n / timed(lambda: bare_loop(adapter, task, samples, batch))[0] for _ in range(rounds))


def command_margin(batch: int, small: int, large: int, rounds: int, threads: int) -> dict[str, Any]:
    """``tokenbench compare`` (baseline and random at 100%) as a user runs it, at ``small`` and ``large`` questions.

    Each round times both commands (fresh stores, rotating order); the marginal rate is the
    extra samples over the extra seconds, which leaves start-up and end-of-run work out.
    """
    import subprocess

    def once(n: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "tokenbench", "compare", "--strategies", "baseline,random", "--keep", "1.0", "--limit", str(n)]
            cmd += ["--batch-size", str(batch), "--threads", str(threads), "--store", os.path.join(tmp, "r.db"), "--quiet"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

    times: dict[int, list[float]] = {small: [], large: []}
    for r in range(rounds):
        for n in (small, large) if r % 2 == 0 else (large, small):
            times[n].append(once(n))
    t_small, t_large = statistics.median(times[small]), statistics.median(times[large])
    return {"rate": 2 * (large - small) / (t_large - t_small), "seconds": (t_small, t_large)}


#: run in a fresh interpreter: ``tokenbench compare`` with the first call into the adapter timed
_STARTUP = """
import sys, time
t0 = time.perf_counter()
import tokenbench.decoder_adapter as da
stock = da.DecoderAdapter.generate
def generate(self, *args, **kwargs):
    if not getattr(generate, "seen", False):
        generate.seen = True
        print(f"tokenbench-first-sample {time.perf_counter() - t0:.4f}", file=sys.stderr, flush=True)
    return stock(self, *args, **kwargs)
da.DecoderAdapter.generate = generate
from tokenbench.cli import run
sys.argv = ["tokenbench", *sys.argv[1:]]
run()
"""


#: the floor: what any script needs before its first sample (torch, transformers' LLaVA classes, the weights, the processor)
_FLOOR = """
import sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration
torch.set_num_threads(int(sys.argv[2]))
model = LlavaForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1])
print(f"tokenbench-first-sample {time.perf_counter() - t0:.4f}", file=sys.stderr, flush=True)
"""


def startup(rounds: int, threads: int) -> dict[str, float]:
    """Seconds from interpreter start to the first sample entering the adapter, ``tokenbench compare`` on the embedded model,
    and the floor: a bare script that imports torch and transformers' LLaVA classes and loads the same weights and processor.

    Interleaved rounds (floor, command, floor, ...); medians. The interpreter's own start
    (``python -c pass``) is measured apart and added to both.
    """
    import re
    import subprocess

    from tokenbench.registry import get_registry

    def bare_python() -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return time.perf_counter() - t0

    def first_sample(cmd: list[str]) -> float:
        err = subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
        match = re.search(r"tokenbench-first-sample ([0-9.]+)", err)
        if match is None:
            raise RuntimeError(f"no first sample seen: {err[-400:]}")
        return float(match.group(1))

    interpreter = statistics.median(bare_python() for _ in range(5))
    weights = str(get_registry().load("models", "reference").location())
    ours: list[float] = []
    floor: list[float] = []
    for _ in range(rounds):
        floor.append(first_sample([sys.executable, "-c", _FLOOR, weights, str(threads)]))
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-c", _STARTUP, "compare", "--strategies", "random", "--keep", "0.25", "--limit", "8"]
            ours.append(first_sample(cmd + ["--threads", str(threads), "--store", os.path.join(tmp, "s.db"), "--quiet"]))
    return {
        "interpreter": interpreter,
        "to_first_sample": statistics.median(ours) + interpreter,
        "min": min(ours) + interpreter,
        "max": max(ours) + interpreter,
        "floor": statistics.median(floor) + interpreter,
        "own": statistics.median(o - f for o, f in zip(ours, floor)),
    }


def profile(adapter: Any, task: Any, samples: Sequence[Any], batch: int, top: int = 25) -> str:
    """cProfile of one ``baseline`` pass: the functions with the most own time."""
    import cProfile
    import io
    import pstats

    from tokenbench.budget import FULL
    from tokenbench.registry import get_registry

    strategy = get_registry().load("strategies", "baseline")()
    prof = cProfile.Profile()
    prof.runcall(tokenbench_loop, adapter, task, samples, batch, strategy, FULL)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["reference", "llava576", "both"], default="both")
    p.add_argument("--batch", default="1,8", help="batch sizes (comma list; default 1,8)")
    p.add_argument("--samples", type=int, help="samples per pass (default: 160 on reference, 16 on llava576)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one tokenbench pass per model and batch")
    p.add_argument(
        "--command",
        action="store_true",
        help="also time the whole `tokenbench compare` command on the reference model, at the margin between --margin questions",
    )
    p.add_argument("--margin", default="40,440", help="the two question counts of --command (default 40,440)")
    p.add_argument("--startup", action="store_true", help="also time interpreter start to the first sample of `tokenbench compare` (embedded model)")
    p.add_argument("--startup-only", action="store_true", help="only the start-up measurement")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    models = [] if args.startup_only else ["reference", "llava576"] if args.model == "both" else [args.model]
    from tabulate import tabulate

    from tokenbench.environment import environment

    rows: list[list[Any]] = []
    command_rows: list[list[Any]] = []
    notes: list[str] = []
    for name in models:
        n = args.samples or (160 if name == "reference" else 16)
        adapter, task, samples, desc = (load_reference if name == "reference" else load_llava576)(n)
        notes.append(f"{name}: {desc}")
        for batch in (int(b) for b in args.batch.split(",")):
            print(f"{name}, batch {batch}: {args.rounds} rounds of {n} samples ...", file=sys.stderr)
            res = measure(adapter, task, samples, batch, args.rounds)
            rows.append(
                [
                    name,
                    batch,
                    n,
                    f"{res['bare']['rate']:.1f}",
                    f"{res['baseline']['rate']:.1f}",
                    f"{res['baseline']['ratio']:.3f}",
                    f"{res['random@100%']['rate']:.1f}",
                    f"{res['random@100%']['ratio']:.3f}",
                    "yes" if res["same_predictions"] else f"NO ({res['mismatches']} differ)",
                ]
            )
            if args.profile:
                print(f"\n{name}, batch {batch}: cProfile of one baseline pass\n{profile(adapter, task, samples, batch)}")
            if args.command and name == "reference":
                small, large = (int(x) for x in args.margin.split(","))
                print(f"reference, batch {batch}: tokenbench compare at {small} and {large} questions, {args.rounds} rounds ...", file=sys.stderr)
                margin = command_margin(batch, small, large, args.rounds, args.threads)
                bare = bare_rate_on(adapter, task, large, batch, args.rounds)
                command_rows.append(
                    [
                        batch,
                        f"{small} / {large}",
                        f"{margin['seconds'][0]:.2f} / {margin['seconds'][1]:.2f}",
                        f"{bare:.1f}",
                        f"{margin['rate']:.1f}",
                        f"{margin['rate'] / bare:.3f}",
                    ]
                )
    if rows:
        headers = ["model", "batch", "samples", "bare samples/s", "baseline samples/s", "ratio", "random@100% samples/s", "ratio", "same predictions"]
        print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
        notes.append(
            f"rates: samples / second over a whole pass, median of {args.rounds} interleaved rounds; ratio: median over rounds of tokenbench rate / bare rate (target >= 0.95)"
        )
    if command_rows:
        print("\nthe whole command (`tokenbench compare --strategies baseline,random --keep 1.0`), reference model, marginal:\n")
        headers = ["batch", "questions", "command s (median)", "bare samples/s", "compare samples/s (marginal)", "ratio"]
        print(tabulate(command_rows, headers=headers, tablefmt="github", disable_numparse=True))
    if args.startup or args.startup_only:
        st = startup(args.rounds, args.threads)
        print(
            f"\nstart-up: interpreter start to the first sample entering the adapter, `tokenbench compare --limit 8` on the embedded model: "
            f"{st['to_first_sample']:.2f} s (median of {args.rounds}; range {st['min']:.2f}–{st['max']:.2f} s; the interpreter's own start "
            f"{st['interpreter']:.3f} s included); the floor (a bare script: import torch and transformers' LLaVA classes, load the same "
            f"weights and processor) {st['floor']:.2f} s; tokenbench's own share {st['own']:.2f} s (median of the per-round differences)"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = environment("cpu")
    for line in [
        *notes,
        f"device {env['device_name']} ({cpu_model()}, {os.cpu_count()} cores), {args.threads} threads, float32, sdpa attention; load average (1 min) at the end {load:.2f}",
        f"torch {env['torch']}, transformers {env['transformers']}, tokenbench {env['tokenbench']}, python {env['python']}",
    ]:
        print("- " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
