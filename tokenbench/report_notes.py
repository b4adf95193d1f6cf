"""The footnotes under a comparison table: the model and environment, the statistics used, the units and the position ids.

Every number a table prints says where it came from; these lines say it once per table.
"""

from __future__ import annotations

from typing import Any

from tokenbench import stats_clustered
from tokenbench.results import Comparison

__all__ = ["footnotes", "position_note", "significance_note"]


def significance_note(cmp: Comparison, rows: list[dict[str, Any]], adjust: str) -> str:
    """The footnote naming the paired test, its adjustment and the intervals (clustered when the rows were)."""
    tested = sum(r["p_value"] is not None for r in rows)
    adjusted = f"{'Holm' if adjust == 'holm' else adjust}-adjusted over {tested} comparison{'s' if tested != 1 else ''}"
    clusters = max((r["clusters"] for r in rows if r.get("clusters")), default=None)
    if clusters is not None:
        return (
            f"p: {stats_clustered.CLUSTER_TEST} test against the baseline, paired over the task's {clusters} clusters of related samples "
            f"(the sum of each cluster's differences flips sign as one), {adjusted}; Δ and accuracy CI: cluster-robust 95% "
            "(lmms-eval's clustered standard error, t with clusters − 1 degrees of freedom)"
        )
    test = "McNemar's exact test" if cmp.metric_kind == "binary" else "paired permutation test"
    return f"p: {test} against the baseline on paired samples, {adjusted}; accuracy CI: " + ("Wilson" if cmp.metric_kind == "binary" else "bootstrap") + " 95%"


def footnotes(cmp: Comparison, rows: list[dict[str, Any]], adjust: str) -> list[str]:
    env = cmp.environment
    weights = cmp.model.get("weights_sha256") or cmp.model.get("revision")
    notes = [
        f"model {cmp.model.get('model')} ({f'weights {weights}, ' if weights else ''}{cmp.model.get('dtype')}, {cmp.model.get('attention')} attention, "
        f"{env.get('device_name')}, {env.get('threads')} threads); task {cmp.task.get('name')}, {len(cmp.sample_ids)} samples, metric {cmp.metric_name}",
        significance_note(cmp, rows, adjust),
        "tokens: visual tokens entering the language model / averaged over decoder layers (measured in the forward pass); "
        "FLOPs: prefill (vision + projector + LLM), FLOPs = 2 × multiply-adds counted by fvcore, mean per sample",
        position_note(cmp),
        f"torch {env.get('torch')}, transformers {env.get('transformers')}, fvcore {env.get('fvcore')}, tokenbench {env.get('tokenbench')}",
    ]
    timed = next((run.timing for run in cmp.runs if run.strategy == "baseline" and run.timing), None)
    if timed and (timed.get("latency_ms") or {}).get("ttft_median") is not None:
        lat, st, tenv = timed["latency_ms"], timed.get("settings", {}), timed.get("environment", {})
        notes.append(
            f"TTFT vs base: baseline median time to first token (vision encoder + selection + prefill; {lat['ttft_median']:.1f} ms, "
            f"IQR {lat['ttft_iqr']:.1f}) over the row's; {lat['n']} timed calls per row on {len(timed.get('sample_ids', []))} samples, "
            f"batch 1, {st.get('warmup')} warm-up runs each, strategies interleaved, {st.get('new_tokens')} forced new tokens, "
            f"{tenv.get('timer')}, {tenv.get('device_name')}, {tenv.get('threads')} threads"
        )
    notes += sorted({f"{r['label']} @ {r['budget']}: {r['power_note']}" for r in rows if r.get("power_note")})[:3]
    return notes


def position_note(cmp: Comparison) -> str:
    """Which position ids each reducing strategy hands the language model (its ``position_policy``)."""
    policies: dict[str, list[str]] = {}
    for run in cmp.runs:
        # the strategy's name, and the switch when a run changed its policy (other parameters do not matter here)
        name = run.strategy + (f":positions={run.params['positions']}" if "positions" in run.params else "")
        if run.strategy != "baseline" and name not in policies.get(run.position_policy, []):
            policies.setdefault(run.position_policy, []).append(name)
    if not policies:
        return "position ids: the baseline keeps every token"
    if len(policies) == 1:
        return f"position ids after reduction: {next(iter(policies))} for every strategy"
    return "position ids after reduction: " + "; ".join(f"{policy} for {', '.join(labels)}" for policy, labels in sorted(policies.items()))
