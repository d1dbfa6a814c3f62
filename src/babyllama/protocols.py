"""Evaluation protocols: one name (``eval.protocol``) for every setting that makes scores comparable.

``babyllama`` is our own documented practice: BLiMP conditioned on ``</s>`` (our training separator),
ties counted wrong, the headline a mean over phenomena, fine-tuning checkpoints selected on a held-out
part of train and reported on the untouched validation file, sentence pairs joined by ``</s>``.

Each ``babylm-YYYY`` value sets what that year's official pipeline does, read from its code:

- 2023 (``babylm/evaluation-pipeline``, its own lm-eval fork): the empty context is the tokenizer's
  end-of-text token (``</s>``), each sentence follows the target separator " ", the first argmax wins
  (a tie counts as correct), the score per file is pooled over pairs and the files are one per
  phenomenon (so the headline is a mean over phenomena). Fine-tuning: HF Trainer, lr 5e-5, batch 64,
  10 epochs, evaluation every 200 steps with patience 10, seed 12, 128 tokens, the best checkpoint
  selected on the validation file that is reported (F1 for two-class tasks, accuracy otherwise),
  sentence pairs passed to the tokenizer as a pair (no template: plain concatenation).
- 2024 (``babylm/evaluation-pipeline-2024``, lm-eval 0.4): an empty context becomes the tokenizer's BOS
  when it has one; " " before each sentence; first argmax; the headline is the unweighted mean over the
  67 paradigm tasks (supplement: its 5 files). Fine-tuning as 2023 but evaluated every epoch with
  patience 3.
- 2025 (``babylm/evaluation-pipeline-2025``): the bare sentence is tokenized with the tokenizer's own
  special tokens (``prefix: tokenizer``; ours add none) and its first token is not scored; nothing is
  truncated; first argmax; mean over paradigms (``UID``). WUG adjective / past tense (``eval.wug_adj``,
  ``eval.wug_past``): Spearman between the model's share of the first sentence and people's ratio. Fine-tuning: lr 3e-5, batch 32 (16 for BoolQ and MultiRC), 10 epochs (WSC 30), 512 tokens,
  seed 42, AdamW with weight decay 0.01, 6% warmup then cosine decay to 0.1 x lr, evaluated every epoch
  and the best epoch kept (no early stopping), selected on the validation file with the task metric;
  token 0 through the LN-Linear-GELU-LN-Dropout-Linear head (``head: babylm``), ``drop_last``, no
  gradient clipping, MNLI/QQP training subsampled to 10k, and every task reported by accuracy (the GLUE
  headline is their mean). 2024's mnli-mm is the MNLI model scored on mismatched (``mnli_mm: mnli_model``).

- 2026 (``babylm-org/babylm-eval``, ``strict/``, read at its July 2026 state): as 2025, except that a
  tie for the top score is broken at random (``ties: random``, seeded by ``eval.seed``; unseeded there)
  and a NaN score counts as minus infinity; EWoK pairs one target with two contexts
  (``ewok_pairing: contexts``); entity-tracking items with an option containing "nothing" are left out
  (``entity_skip_nothing``); GlobalPIQA is new (``eval.global_piqa``, length-normalised); the WUG tasks
  are dropped (``dropped`` in their registry declarations: configured data is not scored, a note says
  so). Fine-tuning is the 2025 script (below).

EWoK, entity tracking, COMPS and GlobalPIQA score a completion after a context; the 2023/2024 pipelines
put no token before the context (``context_prefix: none``), 2025/2026 the tokenizer's own special tokens
(``tokenizer``); ours conditions on ``</s>`` as for BLiMP.

Explicit keys always win: a protocol only fills the keys a config leaves unset.
"""

from __future__ import annotations

from typing import Any

ZERO_SHOT_KEYS = ("prefix", "leading_space", "ties", "aggregation", "context_prefix", "truncate", "ewok_pairing",
                  "entity_skip_nothing")

_OURS = {"prefix": "eos", "leading_space": True, "ties": "wrong", "aggregation": "phenomena",
         "context_prefix": "eos", "truncate": True, "ewok_pairing": "targets", "entity_skip_nothing": False}
_LM_EVAL = {"truncate": True, "ewok_pairing": "targets", "entity_skip_nothing": False}
_2025 = {"prefix": "tokenizer", "leading_space": False, "ties": "correct", "aggregation": "paradigms",
         "context_prefix": "tokenizer", "truncate": False, "ewok_pairing": "targets", "entity_skip_nothing": False}
_FT_2023 = {"lr": 5e-5, "batch_size": 64, "epochs": 10, "patience": 10, "eval_every": 200, "seed": 12,
            "max_seq_length": 128, "select_on": "validation", "select_metric": "f1_if_binary",
            "pair_join": "concat", "weight_decay": 0.0, "warmup_fraction": 0.0, "schedule": "linear"}

#: BabyLM 2025 fine-tuning (evaluation-pipeline-2025, eval_finetuning.sh and finetune/): token-0 pooling through
#: the LN-Linear-GELU-LN-Dropout-Linear head, drop_last, no clipping, the best epoch on the validation file by
#: accuracy (F1 for MRPC/QQP), and the GLUE headline the mean accuracy of its 7 tasks.
_FT_2025 = {"lr": 3e-5, "batch_size": 32, "epochs": 10, "patience": 10, "eval_every": 0, "seed": 42,
            "max_seq_length": 512, "select_on": "validation", "select_metric": "task", "pair_join": "concat",
            "weight_decay": 0.01, "warmup_fraction": 0.06, "schedule": "cosine", "head": "babylm", "drop_last": True,
            "grad_clip": None, "report_metric": "accuracy"}
#: Per task: BoolQ/MultiRC batch 16, WSC 30 epochs, MNLI and QQP training subsampled to 10k examples.
_FT_TASKS_2025 = {"boolq": {"batch_size": 16}, "multirc": {"batch_size": 16}, "wsc": {"epochs": 30, "patience": 30},
                  "mnli": {"max_train_examples": 10_000}, "qqp": {"max_train_examples": 10_000}}
#: The tasks the 2025/2026 pipelines fine-tune on (CoLA, SST-2, MNLI-mm and QNLI were dropped in 2025).
BABYLM_2025_TASKS = ("boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc")

#: name -> {"eval": zero-shot keys, "finetune": eval.finetune_defaults keys, "tasks": per-task keys}
PROTOCOLS: dict[str, dict[str, Any]] = {
    "babyllama": {"eval": dict(_OURS), "finetune": {}, "tasks": {}},
    "babylm-2023": {
        "eval": {"prefix": "eos", "leading_space": True, "ties": "correct", "aggregation": "phenomena",
                 "context_prefix": "none", **_LM_EVAL},
        "finetune": dict(_FT_2023),
        "tasks": {},
    },
    "babylm-2024": {
        "eval": {"prefix": "bos", "leading_space": True, "ties": "correct", "aggregation": "paradigms",
                 "context_prefix": "none", **_LM_EVAL},
        "finetune": {**_FT_2023, "patience": 3, "eval_every": 0, "mnli_mm": "mnli_model"},
        "tasks": {},
    },
    "babylm-2025": {
        "eval": dict(_2025),
        "finetune": dict(_FT_2025),
        "tasks": dict(_FT_TASKS_2025),
    },
    # Fine-tuning in 2026 (babylm-eval strict/evaluation_pipeline/finetune) is the 2025 script on the same 7
    # tasks. Its 2026-06-28 fix scales the loss by the gradient-accumulation steps, which only matters with
    # accumulation; ours takes one optimizer step per batch, so both years train alike.
    "babylm-2026": {
        "eval": {**_2025, "ties": "random", "ewok_pairing": "contexts", "entity_skip_nothing": True},
        "finetune": dict(_FT_2025),
        "tasks": dict(_FT_TASKS_2025),
    },
}


def apply_protocol(data: Any) -> Any:
    """The raw ``eval`` mapping with every key the protocol implies filled in where it is unset.

    Sections that are already validated objects (a section built in code, or the model's own values when
    a field is assigned) are left as they are: the protocol was applied when they were built.
    """
    if not isinstance(data, dict):
        return data
    preset = PROTOCOLS.get(data.get("protocol", "babyllama"))
    if preset is None:  # the Literal field reports the bad name
        return data
    out = dict(data)
    _map_ties_correct(out)
    for key, value in preset["eval"].items():
        out.setdefault(key, value)
    defaults = out.get("finetune_defaults")
    if defaults is None or isinstance(defaults, dict):
        out["finetune_defaults"] = {**preset["finetune"], **(defaults or {})}
    tasks = out.get("finetune_tasks")
    if preset["tasks"] and (tasks is None or isinstance(tasks, dict)):
        merged = dict(tasks or {})
        for name, keys in preset["tasks"].items():
            own = merged.get(name) or {}
            merged[name] = {**keys, **own} if isinstance(own, dict) else own
        out["finetune_tasks"] = merged
    return out


def _map_ties_correct(out: dict[str, Any]) -> None:
    """The old boolean eval.ties_correct onto eval.ties (true: correct, false: wrong); both given must agree."""
    if "ties_correct" not in out:
        return
    old = out.pop("ties_correct")
    if not isinstance(old, bool):
        out["ties"] = old  # the Literal field reports the bad value
        return
    mapped = "correct" if old else "wrong"
    if out.setdefault("ties", mapped) != mapped:
        raise ValueError(f"eval.ties_correct={str(old).lower()} (the old key) contradicts eval.ties={out['ties']}")


def implied_settings(ev: Any) -> list[tuple[str, Any, Any]]:
    """(key, value in effect, value the protocol implies) for every key the protocol sets."""
    preset = PROTOCOLS[ev.protocol]
    rows = [(f"eval.{k}", getattr(ev, k), v) for k, v in preset["eval"].items()]
    defaults = ev.finetune_defaults
    ft = preset["finetune"] or {k: getattr(type(defaults)(), k) for k in _FT_2023}
    rows += [(f"eval.finetune_defaults.{k}", getattr(defaults, k), v) for k, v in ft.items()]
    for task, keys in preset["tasks"].items():
        hp = ev.finetune_hparams(task)
        rows += [(f"eval.finetune_tasks.{task}.{k}", getattr(hp, k), v) for k, v in keys.items()]
    return rows


#: The official code each protocol follows (what a model card names as the pipeline version).
PIPELINES: dict[str, str] = {
    "babyllama": "babyllama's own protocol (not an official BabyLM pipeline)",
    "babylm-2023": "github.com/babylm/evaluation-pipeline (2023, lm-eval fork)",
    "babylm-2024": "github.com/babylm/evaluation-pipeline-2024 (lm-eval 0.4)",
    "babylm-2025": "github.com/babylm/evaluation-pipeline-2025 (commit bf55c11, 2025-08-17)",
    "babylm-2026": "github.com/babylm-org/babylm-eval, strict/ (2026 edition; fine-tuning as of the 2026-06-28 fix)",
}
