"""(Super)GLUE and MSGS fine-tuning of a causal LM, reading BabyLM's data files.

Files, looked up in ``data`` and in its sub-folders (e.g. ``glue_filtered/``, ``msgs_filtered/``):

- BabyLM 2023: ``{task}.train.json`` and ``{task}.validation.json`` (JSON lines); MNLI's are
  ``mnli.validation_matched.json`` / ``mnli.validation_mismatched.json``, or ``mnli.validation.json`` /
  ``mnli-mm.validation.json``;
- BabyLM 2024: ``{task}.train.jsonl`` and ``{task}.valid.jsonl`` (``mnli-mm.valid.jsonl``).
MNLI-mm trains on MNLI's train file. A task whose files are absent is skipped, not an error.

Inputs follow the GLUE field names: cola/sst2 and MSGS ``sentence``; mrpc/rte ``sentence1``/``sentence2``;
qqp ``question1``/``question2``; mnli ``premise``/``hypothesis``; qnli ``question``/``sentence``; boolq
``question``/``passage``; multirc "Question: {question} Answer: {answer}" then ``paragraph``; wsc
'Does "{span2_text}" refer to "{span1_text}" in this passage?' then ``text``. Two segments are joined by
the model's EOS token (our training separator; ``pair_join``); the label is ``label``. For MSGS, evaluation keeps the
rows with ``condition == "test"`` when the file has that field (the 2023 pipeline's filter).

Model: ``AutoModelForSequenceClassification`` from the causal checkpoint with a fresh, seeded linear
head; it classifies from the last non-pad token (LlamaForSequenceClassification /
GPT2ForSequenceClassification). Batches are right-padded with the pad id set in the config, so that
token is the last real one.

Training: AdamW (``weight_decay``, 0 by default), ``warmup_fraction`` of linear warmup then linear
decay to 0 (``schedule: cosine``: cosine decay to 0.1 x lr, as the 2025 pipeline; babyllama.lm.schedule), gradient clipping at
1.0 (the HF Trainer defaults the 2023 pipeline used), seeded shuffling. Every ``eval_every`` steps (0:
every epoch) and at the end, the model is scored for selection; the best checkpoint is kept, and
training stops after ``patience`` evaluations without improvement. With ``select_on: holdout`` (ours)
selection uses a seeded hold-out of ``holdout_fraction`` of the train file and the validation file is
never seen before the reported score; ``select_on: validation`` selects on the reported file itself,
as the BabyLM pipelines do (``eval.protocol: babylm-*``), which flatters the scores. The selection
metric is the task's own (``select_metric: task``) or, as the 2023/2024 pipelines, F1 for two-class
tasks and accuracy otherwise (``f1_if_binary``). ``pair_join: concat`` concatenates two segments with
nothing between them, which is what the official pipelines' tokenizer pair encoding gives for a
tokenizer without a pair template (ours, GPT-2's).

Metrics (fractions, as the pipeline reports them x100): MCC for CoLA and MSGS, F1 of class 1 for MRPC
and QQP, accuracy otherwise.

Result: ``{"task", "metric", "score", "n_train", "n_holdout", "n_eval", "best_step", "holdout_score",
"steps", "stopped_early", "model", "train_file", "eval_file", "hp", "seconds"}``, or
``{"task", "skipped": reason}``. With ``out`` (a folder) it is written to ``out/result.json`` and the
validation predictions to ``out/predictions.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from babyllama import config, progress
from babyllama.config import FinetuneConfig
from babyllama.errors import UserError
from babyllama.evaluate.classifier import load_classifier
from babyllama.evaluate.formats import max_positions, read_json_rows, text_field
from babyllama.hf_logging import quiet_transformers
from babyllama.io import atomic_path, atomic_write_json
from babyllama.lm import schedule
from babyllama.runtime import resolve_device

# -- tasks ---------------------------------------------------------------------------------------------

Inputs = Callable[[Path, str, dict[str, Any]], list[str]]


def _fields(*keys: str) -> Inputs:
    return lambda path, loc, row: [text_field(path, loc, row, k) for k in keys]


def _multirc(path: Path, loc: str, row: dict[str, Any]) -> list[str]:
    q, a, p = (text_field(path, loc, row, k) for k in ("question", "answer", "paragraph"))
    return [f"Question: {q} Answer: {a}", p]


def _wsc(path: Path, loc: str, row: dict[str, Any]) -> list[str]:
    span1 = text_field(path, loc, row, "span1_text" if "span1_text" in row else "span1")
    span2 = text_field(path, loc, row, "span2_text" if "span2_text" in row else "span2")
    return [f'Does "{span2}" refer to "{span1}" in this passage?', text_field(path, loc, row, "text")]


@dataclass(frozen=True)
class Task:
    metric: str  # "mcc" | "f1" | "accuracy"
    num_labels: int
    inputs: Inputs
    msgs: bool = False


GLUE_TASKS: dict[str, Task] = {
    "cola": Task("mcc", 2, _fields("sentence")),
    "sst2": Task("accuracy", 2, _fields("sentence")),
    "mrpc": Task("f1", 2, _fields("sentence1", "sentence2")),
    "qqp": Task("f1", 2, _fields("question1", "question2")),
    "mnli": Task("accuracy", 3, _fields("premise", "hypothesis")),
    "mnli-mm": Task("accuracy", 3, _fields("premise", "hypothesis")),
    "qnli": Task("accuracy", 2, _fields("question", "sentence")),
    "rte": Task("accuracy", 2, _fields("sentence1", "sentence2")),
    "boolq": Task("accuracy", 2, _fields("question", "passage")),
    "multirc": Task("accuracy", 2, _multirc),
    "wsc": Task("accuracy", 2, _wsc),
}
MSGS_TASKS = list(config.MSGS_TASKS)
#: Every task, in the config's order (the config names them; this module says how to read and score them).
TASKS: dict[str, Task] = {**{t: GLUE_TASKS[t] for t in config.GLUE_TASKS},
                          **{t: Task("mcc", 2, _fields("sentence"), msgs=True) for t in MSGS_TASKS}}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown fine-tuning task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def _file_names(task: str, split: str) -> list[str]:
    if split == "train":
        stems = [f"{task}.train"] + (["mnli.train"] if task == "mnli-mm" else [])
    elif task == "mnli":
        stems = ["mnli.validation", "mnli.valid", "mnli.validation_matched", "mnli.valid_matched"]
    elif task == "mnli-mm":
        stems = ["mnli-mm.validation", "mnli-mm.valid", "mnli.validation_mismatched", "mnli.valid_mismatched"]
    else:
        stems = [f"{task}.validation", f"{task}.valid"]
    return [stem + ext for stem in stems for ext in (".json", ".jsonl")]


def find_task_files(data: str | Path, task: str) -> tuple[Path | None, Path | None]:
    """The train and validation files of ``task`` under ``data`` (None where absent)."""
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"{data}: fine-tuning data folder not found")
    folders = [data] + sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))

    def first(names: list[str]) -> Path | None:
        return next((f / n for n in names for f in folders if (f / n).is_file()), None)

    return first(_file_names(task, "train")), first(_file_names(task, "eval"))


@dataclass
class Examples:
    texts: list[list[str]]
    labels: list[int]


def _label(path: Path, loc: str, row: dict[str, Any], num_labels: int) -> int:
    if "label" not in row:
        raise UserError(f"{path}: {loc}: missing field 'label'")
    value = row["label"]
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or not 0 <= value < num_labels:
        raise UserError(f"{path}: {loc}: label {row['label']!r} is not a class id in 0..{num_labels - 1}")
    return value


def read_examples(path: Path, task: str, *, evaluation: bool = False) -> Examples:
    """Texts and labels of one task file; for MSGS evaluation only the ``condition == "test"`` rows."""
    spec = get_task(task)
    rows = read_json_rows(path)
    if spec.msgs and evaluation and any("condition" in row for _, row in rows):
        rows = [(loc, row) for loc, row in rows if row.get("condition") == "test"]
    if not rows:
        raise UserError(f"{path}: no examples in this file")
    texts = [spec.inputs(path, loc, row) for loc, row in rows]
    labels = [_label(path, loc, row, spec.num_labels) for loc, row in rows]
    return Examples(texts, labels)


# -- metrics -------------------------------------------------------------------------------------------


def accuracy(labels: list[int], preds: list[int]) -> float:
    return sum(y == p for y, p in zip(labels, preds, strict=True)) / len(labels)


def f1_score(labels: list[int], preds: list[int]) -> float:
    """F1 of class 1 (0 when there is no true or predicted positive)."""
    tp = sum(y == 1 and p == 1 for y, p in zip(labels, preds, strict=True))
    fp = sum(y != 1 and p == 1 for y, p in zip(labels, preds, strict=True))
    fn = sum(y == 1 and p != 1 for y, p in zip(labels, preds, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(labels: list[int], preds: list[int]) -> float:
    """Matthews correlation (multi-class form; 0 when either side is constant)."""
    k = max(max(labels), max(preds)) + 1
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    t, p, c, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    denom = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom else 0.0


TASK_METRICS: dict[str, Callable[[list[int], list[int]], float]] = {
    "mcc": matthews_corrcoef, "f1": f1_score, "accuracy": accuracy}


# -- model inputs --------------------------------------------------------------------------------------


def encode_examples(tokenizer: Any, texts: list[list[str]], sep_id: int | None, max_len: int) -> list[list[int]]:
    """Token ids per example: segments joined by ``sep_id``, longest segment trimmed first to fit."""
    n_seg = max(len(t) for t in texts)
    columns = [[t[i] if i < len(t) else "" for t in texts] for i in range(n_seg)]
    encoded = [tokenizer(col, add_special_tokens=False)["input_ids"] for col in columns]
    out = []
    for j, example in enumerate(texts):
        segs = [list(encoded[i][j]) for i in range(len(example))]
        n_sep = len(segs) - 1 if sep_id is not None else 0
        while sum(map(len, segs)) + n_sep > max_len:
            longest = max(range(len(segs)), key=lambda i: len(segs[i]))
            segs[longest].pop()
        ids = segs[0]
        for seg in segs[1:]:
            ids = ids + ([sep_id] if sep_id is not None else []) + seg
        out.append(ids or [sep_id if sep_id is not None else 0])
    return out


def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: each row's last real token stays its last non-pad token."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def classify_logits(model: Any, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    ids, mask = pad_batch(seqs, pad_id, next(model.parameters()).device)
    return model(input_ids=ids, attention_mask=mask).logits


@torch.no_grad()
def predict(model: Any, seqs: list[list[int]], pad_id: int, batch_size: int) -> list[int]:
    """Predicted class of each sequence (batched by length to waste little on padding)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    preds = [0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits = classify_logits(model, [seqs[i] for i in idx], pad_id)
        for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
            preds[i] = p
    model.train(was_training)
    return preds


# -- fine-tuning ---------------------------------------------------------------------------------------


def selection_metric(spec: Task, hp: FinetuneConfig) -> str:
    """The metric the best checkpoint is chosen by."""
    if hp.select_metric == "f1_if_binary":
        return "f1" if spec.num_labels == 2 else "accuracy"
    return spec.metric


#: Floor of the fine-tuning schedules, as a fraction of the peak lr (the 2025 pipeline's cosine ends at 0.1).
FINETUNE_MIN_LR_RATIO = {"linear": 0.0, "cosine": 0.1}


def lr_factor(step: int, total: int, hp: FinetuneConfig) -> float:
    """Multiplier of the peak lr after ``step`` optimizer steps: linear warmup, then linear or cosine decay
    (babyllama.lm.schedule)."""
    return schedule.lr_factor(step, kind=hp.schedule, total=total, warmup=int(hp.warmup_fraction * total),
                              min_lr_ratio=FINETUNE_MIN_LR_RATIO[hp.schedule])


def _train_and_select(model: Any, hp: FinetuneConfig, task: str, fit_idx: np.ndarray, ids: list[list[int]],
                      labels: list[int], pad_id: int, dev: torch.device, steps_per_epoch: int,
                      score: Callable[[], float]) -> tuple[float, int, dict[str, Any], int, bool]:
    """Train with early stopping; (best score, its step, its weights, steps taken, stopped early)."""
    total_steps = hp.epochs * steps_per_epoch
    every = hp.eval_every or steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, hp))
    gen = torch.Generator().manual_seed(hp.seed)
    best, best_step, best_state, since_best, step = -math.inf, 0, None, 0, 0
    model.train()
    bar = progress.bar(total_steps, progress.context_label(f"{task} finetune"), "step")
    try:
        for _ in range(hp.epochs):
            order = fit_idx[torch.randperm(len(fit_idx), generator=gen).numpy()]
            for start in range(0, steps_per_epoch * hp.batch_size, hp.batch_size):
                idx = order[start : start + hp.batch_size]
                logits = classify_logits(model, [ids[i] for i in idx], pad_id)
                loss = F.cross_entropy(logits.float(), torch.tensor([labels[i] for i in idx], device=dev))
                loss.backward()
                if hp.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if step % every and step != total_steps:
                    continue
                current = score()
                if current > best:
                    best, best_step, since_best = current, step, 0
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                else:
                    since_best += 1
                    if since_best >= hp.patience:
                        return best, best_step, best_state, step, True
    finally:
        bar.close()
    return best, best_step, best_state, step, False



def finetune_task(
    model_dir: str | Path,
    data: str | Path,
    task: str,
    hp: FinetuneConfig,
    *,
    out: str | Path | None = None,
    device: str | None = None,
    missing: Literal["skip", "error"] = "skip",
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on ``task`` and score it on the validation file (see the module docstring).

    A task whose files are absent is skipped with a note (``run`` evaluates every listed task), or with
    ``missing="error"`` (the `finetune` command, which was asked for exactly that task) a UserError."""
    spec = get_task(task)
    files = _task_files(data, task, hp)
    if isinstance(files, str):
        if missing == "error":
            raise UserError(f"finetune: {files}")
        result: dict[str, Any] = {"task": task, "skipped": files}
        print(f"finetune: skipping {task}: {files}")
        if out is not None:
            atomic_write_json(Path(out) / "result.json", result)
        return result
    train_file, eval_file, select_file, also_file = files
    t0 = time.perf_counter()
    dev = resolve_device(device)
    torch.manual_seed(hp.seed)  # the new classification head's initialisation
    model, tokenizer, pad_id, sep_id = load_classifier(Path(model_dir), spec.num_labels, dev, hp.head)
    limit = max_positions(model.config)
    max_len = min(hp.max_seq_length, limit) if limit else hp.max_seq_length
    join_id = sep_id if hp.pair_join == "eos" else None

    def encoded(path: Path, *, evaluation: bool) -> tuple[list[list[int]], list[int]]:
        ex = read_examples(path, task, evaluation=evaluation)
        return encode_examples(tokenizer, ex.texts, join_id, max_len), ex.labels

    train_ids, train_labels = encoded(train_file, evaluation=False)
    eval_ids, eval_labels = encoded(eval_file, evaluation=True)
    sel_src = (eval_ids, eval_labels) if select_file == eval_file else encoded(select_file, evaluation=True)
    perm = np.random.default_rng(hp.seed).permutation(len(train_ids))
    if hp.max_train_examples is not None:
        perm = perm[: hp.max_train_examples]
    n_hold, fit_idx, sel_ids, sel_labels = _selection_split(hp, perm, train_file, train_ids, train_labels, *sel_src)
    select = TASK_METRICS[selection_metric(spec, hp)]
    steps_per_epoch = (len(fit_idx) // hp.batch_size) if hp.drop_last else math.ceil(len(fit_idx) / hp.batch_size)
    if steps_per_epoch < 1:
        raise UserError(f"{train_file}: {len(fit_idx)} training examples are fewer than one batch of {hp.batch_size} "
                        "(drop_last)")
    best, best_step, best_state, steps, stopped = _train_and_select(
        model, hp, task, fit_idx, train_ids, train_labels, pad_id, dev, steps_per_epoch,
        lambda: select(sel_labels, predict(model, sel_ids, pad_id, hp.batch_size)))
    model.load_state_dict(best_state)
    preds = predict(model, eval_ids, pad_id, hp.batch_size)
    result = {
        "task": task, **_scores(spec, hp, eval_labels, preds),
        "n_train": int(len(fit_idx)), "n_holdout": int(n_hold), "n_eval": len(eval_ids), "best_step": best_step,
        "selected_on": hp.select_on, "selection_file": str(select_file) if hp.select_on == "validation" else None,
        "selection_metric": selection_metric(spec, hp), "holdout_score": best, "steps": steps,
        "stopped_early": stopped, "model": str(model_dir), "train_file": str(train_file), "eval_file": str(eval_file),
        "hp": hp.model_dump(mode="json"), "seconds": round(time.perf_counter() - t0, 2),
        "predictions": preds,  # in eval-file order: the official predictions.json is built from these
    }
    if also_file is not None:  # BabyLM 2024: the MNLI model itself, scored on mismatched
        mm_ids, mm_labels = encoded(also_file, evaluation=True)
        mm_preds = predict(model, mm_ids, pad_id, hp.batch_size)
        result["mismatched"] = {**_scores(spec, hp, mm_labels, mm_preds), "n_eval": len(mm_ids),
                                "eval_file": str(also_file), "predictions": mm_preds}
    if out is not None:
        _save_outputs(Path(out), model, tokenizer, eval_labels, preds, result)
    return result


def _task_files(data: str | Path, task: str, hp: FinetuneConfig) -> tuple[Path, Path, Path, Path | None] | str:
    """(train, reported validation, selection validation, extra mismatched file) or the reason to skip.

    With ``mnli_mm: mnli_model`` (BabyLM 2024) mnli-mm is the MNLI model: selected on MNLI's matched
    validation file and scored on mismatched; and the mnli run also scores its model on mismatched."""
    train_file, eval_file = find_task_files(data, task)
    if train_file is None or eval_file is None:
        split = "train" if train_file is None else "eval"
        looked = ", ".join(_file_names(task, split))
        return f"no {'train' if split == 'train' else 'validation'} file for {task} under {data} (looked for {looked})"
    select_file, also_file = eval_file, None
    if hp.mnli_mm == "mnli_model" and task == "mnli-mm":
        matched = find_task_files(data, "mnli")[1]
        if matched is None:
            return f"no MNLI matched validation file under {data} to select the MNLI model on (eval.finetune_defaults.mnli_mm)"
        select_file = matched
    elif hp.mnli_mm == "mnli_model" and task == "mnli":
        also_file = find_task_files(data, "mnli-mm")[1]
    return train_file, eval_file, select_file, also_file


def _scores(spec: Task, hp: FinetuneConfig, labels: list[int], preds: list[int]) -> dict[str, Any]:
    """The reported metric and score, and every metric the official results.txt lists."""
    name = "accuracy" if hp.report_metric == "accuracy" else spec.metric
    every = {"accuracy": accuracy(labels, preds), "mcc": matthews_corrcoef(labels, preds)}
    if spec.num_labels == 2:
        every["f1"] = f1_score(labels, preds)
    return {"metric": name, "score": TASK_METRICS[name](labels, preds), "metrics": every}


def _selection_split(hp: FinetuneConfig, perm: np.ndarray, train_file: Path, train_ids: list, train_labels: list,
                     eval_ids: list, eval_labels: list) -> tuple[int, np.ndarray, list, list]:
    """Where the checkpoint is selected: a held-out part of train (ours) or the validation file (BabyLM's).

    Returns (held-out count, training indices, selection inputs, selection labels)."""
    if hp.select_on != "holdout":
        return 0, perm, eval_ids, eval_labels
    n_hold = max(1, round(len(perm) * hp.holdout_fraction))
    if len(perm) - n_hold < 1:
        raise UserError(f"{train_file}: {len(perm)} training examples are too few to hold out {n_hold} for early stopping")
    hold = perm[:n_hold]
    return n_hold, perm[n_hold:], [train_ids[i] for i in hold], [train_labels[i] for i in hold]


def _save_outputs(out: Path, model: Any, tokenizer: Any, labels: list, preds: list, result: dict[str, Any]) -> None:
    """The selected classifier (HF format), its predictions and the result, each written atomically."""
    with quiet_transformers(), atomic_path(out / "model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    atomic_write_json(out / "predictions.json", {"labels": labels, "predictions": preds})
    atomic_write_json(out / "result.json", result)
