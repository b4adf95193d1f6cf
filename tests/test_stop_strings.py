"""Generation ends where the task says (``Task.stop_strings``), besides the model's EOS."""

from __future__ import annotations

import tokenbench


def test_generation_stops_at_the_tasks_stop_strings_and_only_there(tiny_llava) -> None:
    from tokenbench.budget import FULL
    from tokenbench.tasks.shapes.task import ShapesTask

    adapter = tokenbench.get_registry().load("adapters", "llava").load(str(tiny_llava))
    baseline = tokenbench.get_registry().load("strategies", "baseline")()
    samples = list(ShapesTask(n=4).load())[:2]
    prompts = [s.question for s in samples]
    free = adapter.run(samples, prompts, baseline, FULL, max_new_tokens=12)  # no stop strings: EOS or 12 tokens
    tok = adapter.tokenizer
    for b, sample in enumerate(samples):
        tokens = free.output.tokens[b]
        assert len(tokens) >= 4, "the tiny model must generate a few tokens for this test to mean anything"
        stop = tok.decode(tokens[2:3], skip_special_tokens=False)  # a string this sample does produce, as its 3rd token
        first = next(i for i in range(len(tokens)) if stop in tok.decode(tokens[: i + 1][-4:], skip_special_tokens=False))
        stopped = adapter.run([sample], [prompts[b]], baseline, FULL, max_new_tokens=12, stop_strings=(stop,))
        assert stopped.output.tokens[0] == tokens[: first + 1]
    assert ShapesTask.stop_strings == ("\n",) and tokenbench.Task.stop_strings == ("\n",)
