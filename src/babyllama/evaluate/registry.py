"""Every evaluator, declared once, and the one reader of their results.

Each declaration says what switches it on, which file it writes, how it runs and how its headline is
read under the config's protocol. `babyllama run` (pipeline.evaluate_all) and the `babyllama evaluate
<task>` verbs run the jobs; the report, the sweep report and the model card read results only through
`model_results` and `model_headlines`, so adding a task is one declaration here plus its scoring module
and tests, and its column appears in all three. Result files live under ``<out_dir>/eval/<model>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babyllama.config import Config, EvalConfig
from babyllama.io import read_json


@dataclass(frozen=True)
class Job:
    """One result file of one model: ``run(model_dir)`` computes it; ``settings`` is what it depends on."""

    file: str
    column: str | None  # report column (None: shown elsewhere in the report)
    settings: dict[str, Any]
    run: Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class Evaluator:
    name: str
    switch: str  # the config key that turns it on
    jobs: Callable[[Config], list[Job]]  # [] when switched off
    headline: Callable[[dict[str, Any], EvalConfig], float | None]  # (result, the config's eval section)
    percent: bool = True
    cli_data: bool = False  # `babyllama evaluate <name> --model DIR --data PATH` scores a data file
    aliases: list[str] = field(default_factory=list)


# -- declarations ------------------------------------------------------------------------------------


def _perplexity_jobs(cfg: Config) -> list[Job]:
    from babyllama.evaluate.perplexity import evaluate_perplexity

    if not cfg.eval.perplexity:
        return []
    return [Job("perplexity.json", None, {"seq_len": cfg.data.seq_len},
                lambda d: evaluate_perplexity(d, cfg.data_dir, seq_len=cfg.data.seq_len))]


def blimp_settings(ev: EvalConfig) -> dict[str, Any]:
    return {"prefix": ev.prefix, "leading_space": ev.leading_space, "reduction": ev.reduction, "ties": ev.ties,
            "seed": ev.seed, "aggregation": ev.aggregation, "truncate": ev.truncate, "batch_size": ev.batch_size}


def score_blimp(model_dir: Path, data: str, ev: EvalConfig, device: str | None = None) -> dict[str, Any]:
    from babyllama.evaluate.blimp import evaluate_blimp, resolve_data

    return evaluate_blimp(model_dir, resolve_data(data), device=device, **blimp_settings(ev))


def _pairs_jobs(key: str, column: str) -> Callable[[Config], list[Job]]:
    def jobs(cfg: Config) -> list[Job]:
        data = getattr(cfg.eval, key)
        if not data:
            return []
        return [Job(f"{key}.json", column, {"data": _data_id(data), **blimp_settings(cfg.eval)},
                    lambda d: score_blimp(d, data, cfg.eval))]
    return jobs


def completion_settings(ev: EvalConfig, task: str) -> dict[str, Any]:
    """The keys a completion task's score depends on (only its own: EWoK's pairing does not redo COMPS)."""
    out = {"context_prefix": ev.context_prefix, "ties": ev.ties, "seed": ev.seed, "truncate": ev.truncate,
           "batch_size": ev.batch_size}
    if task == "ewok":
        out["ewok_pairing"] = ev.ewok_pairing
    if task == "entity_tracking":
        out["entity_skip_nothing"] = ev.entity_skip_nothing
    return out


def _completion_scorer(task: str) -> Callable[..., dict[str, Any]]:
    def score(model_dir: Path, data: str, ev: EvalConfig, device: str | None = None) -> dict[str, Any]:
        from babyllama.evaluate.completions import evaluate_completions

        return evaluate_completions(task, model_dir, data, device=device, **completion_settings(ev, task))
    return score


def _completion_jobs(task: str, column: str) -> Callable[[Config], list[Job]]:
    def jobs(cfg: Config) -> list[Job]:
        data = getattr(cfg.eval, task)
        if not data:
            return []
        return [Job(f"{task}.json", column, {"data": _data_id(data), **completion_settings(cfg.eval, task)},
                    lambda d: _completion_scorer(task)(d, data, cfg.eval))]
    return jobs


def _finetune_jobs(cfg: Config) -> list[Job]:
    from babyllama.evaluate.finetune import finetune_task

    ev = cfg.eval
    out = []
    for task in ev.finetune:
        hp = ev.finetune_hparams(task)
        out.append(Job(f"finetune/{task}.json", task, {"data": ev.finetune_data, "hp": hp.model_dump(mode="json")},
                       lambda d, t=task, h=hp: finetune_task(d, ev.finetune_data, t, h)))
    return out


def curve_checkpoints(cfg: Config, name: str) -> list[tuple[int, Path]]:
    """(word count, HF folder) of each checkpoint train.save_at_words kept for model ``name``, in order."""
    folder = cfg.words_checkpoint_dir(name)
    if not folder.is_dir():
        return []
    return sorted((int(p.name), p) for p in folder.iterdir() if p.name.isdigit() and (p / "config.json").exists())


def _curve_jobs(cfg: Config) -> list[Job]:
    from babyllama.evaluate.perplexity import evaluate_perplexity

    ev = cfg.eval
    if not ev.curves or not any(m.train.save_at_words for m in cfg.models()):
        return []

    def run(model_dir: Path) -> dict[str, Any]:
        points = []
        for words, ck in curve_checkpoints(cfg, model_dir.name):
            point: dict[str, Any] = {"words": words, "checkpoint": str(ck)}
            if ev.perplexity:
                point["dev_ce"] = evaluate_perplexity(ck, cfg.data_dir, seq_len=cfg.data.seq_len)["ce_nats_per_token"]
            if ev.blimp:
                point["blimp"] = score_blimp(ck, ev.blimp, ev)["headline"]
            points.append(point)
        return {"points": points}

    settings = {"words": {m.name: m.train.save_at_words for m in cfg.models()}, "perplexity": ev.perplexity,
                "blimp": _data_id(ev.blimp) if ev.blimp else None, **blimp_settings(ev)}
    return [Job("curve.json", None, settings, run)]


def pairs_dataset(result: dict[str, Any], label: str = "BLiMP", short: bool = False) -> str:
    """What a minimal-pair result was scored on, its size and what its headline averages, in words:
    'embedded BLiMP subset (first 100 pairs of each paradigm), 6,700 pairs; headline = mean over phenomena'."""
    data = str(result.get("data", "?"))
    embedded = is_embedded(result)
    n = f"{result.get('n_pairs', 0):,} pairs"
    if short:
        return f"{'embedded subset' if embedded else Path(data).name}, {n}"
    where = f"embedded {label} subset (first 100 pairs of each paradigm)" if embedded else f"{label} at {data}"
    return f"{where}, {n}; headline = mean over {result.get('aggregation', 'phenomena')}"


def _data_id(data: str) -> str:
    return data if data.startswith("embedded:") else str(Path(data).expanduser())


def _get(key: str) -> Callable[[dict[str, Any], EvalConfig], float | None]:
    return lambda r, ev: r.get(key)


def _pairs_headline(result: dict[str, Any], ev: EvalConfig) -> float | None:
    """The macro the protocol reports: over phenomena or over paradigms (``eval.aggregation``)."""
    return result.get(f"macro_{ev.aggregation}", result.get("headline"))


REGISTRY: list[Evaluator] = [
    Evaluator("perplexity", "eval.perplexity", _perplexity_jobs, _get("ce_nats_per_token"), percent=False),
    Evaluator("blimp", "eval.blimp", _pairs_jobs("blimp", "BLiMP %"), _pairs_headline),
    Evaluator("supplement", "eval.supplement", _pairs_jobs("supplement", "supplement %"), _pairs_headline),
    Evaluator("ewok", "eval.ewok", _completion_jobs("ewok", "EWoK %"), _get("headline"), cli_data=True),
    Evaluator("entity_tracking", "eval.entity_tracking", _completion_jobs("entity_tracking", "entity tracking %"),
              _get("headline"), cli_data=True, aliases=["entity-tracking"]),
    Evaluator("comps", "eval.comps", _completion_jobs("comps", "COMPS %"), _get("headline"), cli_data=True),
    Evaluator("global_piqa", "eval.global_piqa", _completion_jobs("global_piqa", "GlobalPIQA %"), _get("headline"),
              cli_data=True, aliases=["global-piqa"]),
    Evaluator("finetune", "eval.finetune", _finetune_jobs, _get("score")),
    Evaluator("curves", "eval.curves", _curve_jobs, lambda r, ev: None),
]

#: How `babyllama evaluate <name>` scores a data file with each cli_data evaluator.
SCORERS: dict[str, Callable[..., dict[str, Any]]] = {
    e.name: _completion_scorer(e.name) for e in REGISTRY if e.cli_data}


def evaluator(name: str) -> Evaluator:
    for e in REGISTRY:
        if name == e.name or name in e.aliases:
            return e
    raise KeyError(name)


def jobs(cfg: Config) -> list[tuple[Evaluator, Job]]:
    """Every result file this config asks for, per model, in registry order."""
    return [(e, j) for e in REGISTRY for j in e.jobs(cfg)]


def result_key(job: Job) -> str:
    """How a result is named to its readers: its file without ``.json`` ('blimp', 'finetune/cola')."""
    return job.file.removesuffix(".json")


def read_result(path: Path) -> dict[str, Any] | None:
    """A result file as a dict; None when it is missing or damaged (the readers then show it as missing)."""
    try:
        result = read_json(path) if path.is_file() else None
    except (ValueError, OSError):
        return None
    return result if isinstance(result, dict) else None


def model_results(cfg: Config, name: str) -> dict[str, dict[str, Any]]:
    """{result key: result} of model ``name``, for every job the config asks for whose file reads back."""
    folder = cfg.out / "eval" / name
    out = {}
    for _, job in jobs(cfg):
        result = read_result(folder / job.file)
        if result is not None:
            out[result_key(job)] = result
    return out


def model_headlines(cfg: Config, name: str) -> dict[str, float]:
    """{result key: headline under the config's protocol} of model ``name`` (results without one left out).

    The one place a headline is read: the report, the sweep report and the model card all call this.
    """
    results = model_results(cfg, name)
    out = {}
    for e, job in jobs(cfg):
        result = results.get(result_key(job))
        value = e.headline(result, cfg.eval) if result is not None else None
        if value is not None:
            out[result_key(job)] = float(value)
    return out


def headline_columns(cfg: Config) -> dict[str, str]:
    """{result key: column title} of every headline shown as a column (perplexity and curves are shown apart)."""
    return {result_key(j): j.column for _, j in jobs(cfg) if j.column is not None}


def pair_items(result: dict[str, Any], ev: EvalConfig) -> dict[str, str] | None:
    """Per-pair outcomes grouped as the headline averages them (for paired bootstraps); None when the file
    does not carry them in that grouping (files written before paradigm_items was recorded)."""
    return result.get("items") if ev.aggregation == "phenomena" else result.get("paradigm_items")


def is_embedded(result: dict[str, Any]) -> bool:
    """Whether a minimal-pair result was scored on the subset shipped with babyllama."""
    from babyllama.evaluate.blimp import EMBEDDED

    data = str(result.get("data", "?"))
    return data.startswith("embedded:") or Path(data) in EMBEDDED.values()
