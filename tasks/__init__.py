"""The built-in tasks, registered through the same entry point a third-party package uses."""

from __future__ import annotations

from tokenbench.hookspecs import Register, hookimpl

_BUILTIN = (
    ("jsonl:JsonlTask", "jsonl", "Your own data: one JSON object a line (id, image, question, answers[, choices, kind])."),
    ("pope:PopeTask", "pope", "POPE object hallucination (COCO val2014), yes/no; F1, accuracy, yes-ratio per split."),
    ("gqa:GqaTask", "gqa", "GQA balanced test-dev; exact match, case and punctuation ignored (protocol=llava: after VQA normalisation)."),
    ("mme:MmeTask", "mme", "MME perception + cognition yes/no; official score = acc + acc+ per subtask."),
    ("scienceqa:ScienceQaImgTask", "scienceqa_img", "ScienceQA test split, questions with an image; option-letter accuracy."),
    ("textvqa:TextVqaTask", "textvqa_val", "TextVQA v0.5.1 validation; official VQA accuracy (option ocr=true adds OCR tokens)."),
    ("mmbench:MmbenchTask", "mmbench_en_dev", "MMBench English dev; circular evaluation (every option rotation must be right)."),
    ("ocrbench:OcrBenchTask", "ocrbench", "OCRBench v1 (1,000 OCR questions); contains-match, per-category counts, final score out of 1000."),
    ("chartqa:ChartQaTask", "chartqa", "ChartQA test; relaxed accuracy (numbers within 5%), human and augmented splits."),
    ("docvqa:DocVqaTask", "docvqa_val", "DocVQA validation; ANLS (threshold 0.5)."),
    ("mmstar:MmStarTask", "mmstar", "MMStar val, multiple choice; letter accuracy averaged over sub-categories."),
    ("seedbench:SeedBenchTask", "seedbench", "SEED-Bench v1 image questions, A-D; accuracy, per dimension."),
)


@hookimpl
def register_tasks(register: Register) -> None:
    for target, name, description in _BUILTIN:
        register(f"tokenbench.tasks.{target}", name=name, description=description)
