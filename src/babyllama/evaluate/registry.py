"""Every evaluator, declared once, and the one reader of their results.

Each declaration says what switches it on, which file it writes, how it runs, how its headline is read
under the config's protocol and what that headline measures, which protocols no longer score it, and how
`babyllama evaluate <task> --data PATH` scores a file and prints it. `babyllama run`
(pipeline.evaluate_all) runs the jobs; the report, the sweep report and the model card read results only
through `model_results`, `model_headlines` and `headline_columns`, so adding a zero-shot task is its
scoring module, one declaration here, its config key (eval.<task>) and tests: its column then appears in
all three and its CLI verb in `babyllama evaluate`. Result files live under ``<out_dir>/eval/<model>/``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from babyllama.config import Config, EvalConfig
from babyllama.errors import UserError
from babyllama.io import read_json


@dataclass(frozen=True)
class Job:
    """One result file of one model: ``run(model_dir)`` computes it from the files ``inputs(model_dir)`` names
    (the model folders and the data it reads); ``settings`` are the other things it depends on."""

    file: str
    column: str | None  # report column (None: shown elsewhere in the report)
    settings: dict[str, Any]
    run: Callable[[Path], dict[str, Any]]
    inputs: Callable[[Path], tuple[list[Path], list[Path]]]  # (model folders, data files or folders)
    check: Callable[[], Any] | None = None  # reads and validates its data (before any training: check_data)
    # several models' results at once, in order (read and tokenize the data once); None: `run` one by one
    run_many: Callable[[list[Path]], Iterable[dict[str, Any]]] | None = None


Scorer = Callable[..., dict[str, Any]]  # (model_dir, data, eval settings, device=None) -> result


@dataclass(frozen=True)
class CliOption:
    """One extra option of a task's `babyllama evaluate` verb: argparse's flags and keyword arguments."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class DataScorer:
    """How `babyllama evaluate <name> --model DIR --data PATH` scores a data file and prints the result."""

    score: Scorer
    table: Callable[[dict[str, Any]], str]  # the result as a Markdown table for the console


@dataclass(frozen=True)
class Evaluator:
    """One evaluation task: what turns it on, the result files it writes and how their headline is read."""

    name: str
    switch: str  # the config key that turns it on
    jobs: Callable[[Config], list[Job]]  # [] when switched off
    headline: Callable[[dict[str, Any], EvalConfig], float | None]  # (result, the config's eval section)
    percent: bool = True
    metric: str = "accuracy"  # the headline's metric id (the model card's model-index)
    measure: str = "accuracy"  # what the headline is, in words (the model card)
    cli: DataScorer | None = None  # its `babyllama evaluate <name>` verb, when it scores a data file alone
    aliases: list[str] = field(default_factory=list)
    chance: float | None = None  # a guessing model's headline (two-way choices: 0.5); None when it varies
    # {protocol whose official code no longer scores it: the protocol to use instead}; configured data is
    # then not scored (check_data prints a note) and the CLI refuses.
    dropped: dict[str, str] = field(default_factory=dict)
    download: str = ""  # what to do when its data is not found (a `babyllama download` verb), appended to the error
    label: str = ""  # its name in tables, cards and plots ("" = the name, spaced)
    pairs: bool = False  # minimal pairs (BLiMP-style): phenomena/paradigm tables, per-pair bootstrap
    cli_options: tuple[CliOption, ...] = ()  # options of its `babyllama evaluate` verb beyond the common ones

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ")

    def scores_under(self, protocol: str) -> bool:
        return protocol not in self.dropped

    def score_data(self, model_dir: Path, data: str, ev: EvalConfig, device: str | None = None) -> dict[str, Any]:
        """The CLI's scoring of one data file, refused under a protocol that no longer scores the task."""
        assert self.cli is not None, self.name
        if not self.scores_under(ev.protocol):
            raise UserError(f"{self.name}: the {ev.protocol} protocol does not score it (its official code dropped "
                            f"it); use --protocol {self.dropped[ev.protocol]}")
        return self.cli.score(model_dir, data, ev, device=device)


# -- declarations ------------------------------------------------------------------------------------


def _perplexity_jobs(cfg: Config) -> list[Job]:
    if not cfg.eval.perplexity:
        return []
    return [Job("perplexity.json", None, {"seq_len": cfg.data.seq_len},
                lambda d: _perplexity(d, cfg), lambda d: ([d], dev_data(cfg)))]


def _perplexity(model_dir: Path, cfg: Config) -> dict[str, Any]:
    from babyllama.evaluate.perplexity import evaluate_perplexity  # here: readers of results need no torch

    return evaluate_perplexity(model_dir, cfg.data_dir, seq_len=cfg.data.seq_len)


def dev_data(cfg: Config) -> list[Path]:
    """What dev perplexity reads from the prepared data: the dev tokens, their counts and the tokenizer."""
    from babyllama.data.tokens import MANIFEST, SPLIT_FILES

    return [cfg.data_dir / SPLIT_FILES["dev"], cfg.data_dir / MANIFEST, cfg.data_dir / "tokenizer"]


def data_path(data: str) -> Path:
    """A data set named in the config as the file or folder it reads (``embedded:`` ones included)."""
    from babyllama.evaluate.formats import resolve_data

    return resolve_data(data)


def blimp_settings(ev: EvalConfig) -> dict[str, Any]:
    return {"prefix": ev.prefix, "leading_space": ev.leading_space, "reduction": ev.reduction, "ties": ev.ties,
            "seed": ev.seed, "aggregation": ev.aggregation, "truncate": ev.truncate, "batch_size": ev.batch_size}


def score_blimp(model_dir: Path, data: str, ev: EvalConfig, device: str | None = None) -> dict[str, Any]:
    from babyllama.evaluate.blimp import evaluate_blimp, resolve_data

    return evaluate_blimp(model_dir, resolve_data(data), device=device, **blimp_settings(ev))


def score_blimp_models(model_dirs: list[Path], data: str, ev: EvalConfig) -> Iterator[dict[str, Any]]:
    from babyllama.evaluate.blimp import evaluate_blimp_models, resolve_data

    return evaluate_blimp_models(model_dirs, resolve_data(data), **blimp_settings(ev))


def _data_jobs(task: str, column: str, settings: Callable[[EvalConfig], dict[str, Any]], score: Scorer,
               load: Callable[[str, EvalConfig], Any],
               many: Callable[[list[Path], str, EvalConfig], Iterable[dict[str, Any]]] | None = None,
               ) -> Callable[[Config], list[Job]]:
    """The one result file of a task that scores the data set named by ``eval.<task>``: ``settings`` are the
    eval keys its score depends on, ``load`` reads and validates the data (check_data, before training),
    ``many`` (optional) scores several models at once, reading the data once."""
    def jobs(cfg: Config) -> list[Job]:
        data = getattr(cfg.eval, task)
        if not data:
            return []
        return [Job(f"{task}.json", column, {"data": _data_id(data), **settings(cfg.eval)},
                    lambda d: score(d, data, cfg.eval), lambda d: ([d], [data_path(data)]),
                    lambda: load(data, cfg.eval), None if many is None else lambda ds: many(ds, data, cfg.eval))]
    return jobs


def _load_pairs(data: str, ev: EvalConfig) -> Any:
    from babyllama.evaluate.blimp import load_pairs

    return load_pairs(data)


def _pairs_jobs(task: str, column: str) -> Callable[[Config], list[Job]]:
    return _data_jobs(task, column, blimp_settings, score_blimp, _load_pairs, score_blimp_models)


def _load_items(task: str, data: str, ev: EvalConfig) -> Any:
    from babyllama.evaluate.completions import load_items

    return load_items(task, data, ewok_pairing=ev.ewok_pairing, skip_nothing=ev.entity_skip_nothing)


def completion_settings(ev: EvalConfig, task: str) -> dict[str, Any]:
    """The keys a completion task's score depends on (only its own: EWoK's pairing does not redo COMPS)."""
    out = {"context_prefix": ev.context_prefix, "ties": ev.ties, "seed": ev.seed, "truncate": ev.truncate,
           "batch_size": ev.batch_size}
    if task == "ewok":
        out["ewok_pairing"] = ev.ewok_pairing
    if task == "entity_tracking":
        out["entity_skip_nothing"] = ev.entity_skip_nothing
    return out


def _completion_scorer(task: str) -> Scorer:
    def score(model_dir: Path, data: str, ev: EvalConfig, device: str | None = None) -> dict[str, Any]:
        from babyllama.evaluate.completions import evaluate_completions

        return evaluate_completions(task, model_dir, data, device=device, **completion_settings(ev, task))
    return score


def _completion_jobs(task: str, column: str) -> Callable[[Config], list[Job]]:
    return _data_jobs(task, column, lambda ev: completion_settings(ev, task), _completion_scorer(task),
                      partial(_load_items, task))


def _score_reading(model_dir: Path, data: str, ev: EvalConfig, device: str | None = None) -> dict[str, Any]:
    from babyllama.evaluate.reading import evaluate_reading

    return evaluate_reading(model_dir, data, batch_size=ev.batch_size, device=device)


def _read_reading(data: str, ev: EvalConfig) -> Any:
    from babyllama.evaluate.reading import read_rows

    return read_rows(data)


def wug_settings(ev: EvalConfig) -> dict[str, Any]:
    return {"context_prefix": ev.context_prefix, "truncate": ev.truncate, "batch_size": ev.batch_size}


def _wug_scorer(task: str) -> Scorer:
    def score(model_dir: Path, data: str, ev: EvalConfig, device: str | None = None) -> dict[str, Any]:
        from babyllama.evaluate.wug import evaluate_wug

        return evaluate_wug(task, model_dir, data, device=device, **wug_settings(ev))
    return score


def _wug_jobs(task: str, column: str) -> Callable[[Config], list[Job]]:
    return _data_jobs(task, column, wug_settings, _wug_scorer(task), partial(_load_wug, task))


def _load_wug(task: str, data: str, ev: EvalConfig) -> Any:
    from babyllama.evaluate.wug import load_wug

    return load_wug(data, task)


def dropped_notes(cfg: Config) -> list[str]:
    """One line per configured task that the protocol does not score (its official code dropped the task)."""
    protocol = cfg.eval.protocol
    return [f"{e.switch} is set but not scored: the {protocol} protocol's official code no longer scores {e.name} "
            f"(use eval.protocol {e.dropped[protocol]} to score it)"
            for e in REGISTRY if not e.scores_under(protocol) and e.jobs(cfg)]


def _finetune_jobs(cfg: Config) -> list[Job]:
    ev = cfg.eval
    if not ev.finetune:
        return []
    from babyllama.evaluate.finetune import (  # torch: only when there is fine-tuning
        find_task_files,
        finetune_task,
    )

    out: list[Job] = []
    # mnli before mnli-mm: under mnli_mm 'mnli_model' (BabyLM 2024) mnli-mm reuses the MNLI model's scores.
    for task in sorted(ev.finetune, key=lambda t: (t == "mnli-mm", ev.finetune.index(t))):
        hp = ev.finetune_hparams(task)
        run: Callable[[Path], dict[str, Any]] = partial(_finetune_one, finetune_task, ev.finetune_data, task, hp)
        if task == "mnli-mm" and hp.mnli_mm == "mnli_model" and "mnli" in ev.finetune:
            run = _mismatched_of_mnli(cfg, hp, run, next(j for j in out if j.file == "finetune/mnli.json"))
        # under mnli_mm 'mnli_model' mnli and mnli-mm read both tasks' files (selection on matched, scores on mm)
        names = ("mnli", "mnli-mm") if hp.mnli_mm == "mnli_model" and task in ("mnli", "mnli-mm") else (task,)
        out.append(Job(f"finetune/{task}.json", task, {"data": ev.finetune_data, "hp": hp.model_dump(mode="json")}, run,
                       lambda d, n=names: ([d], sorted({f for t in n for f in find_task_files(ev.finetune_data, t)
                                                        if f is not None})),
                       lambda t=task: find_task_files(ev.finetune_data, t)))
    return out


def _finetune_one(finetune_task: Callable[..., dict[str, Any]], data: str, task: str, hp: Any,
                  model_dir: Path) -> dict[str, Any]:
    return finetune_task(model_dir, data, task, hp)


def _mismatched_of_mnli(cfg: Config, hp: Any, train: Callable[[Path], dict[str, Any]],
                        mnli_job: Job) -> Callable[[Path], dict[str, Any]]:
    """mnli-mm as the BabyLM 2024 code scored it: the MNLI run's own model on mismatched, no second model.

    Reads the MNLI result written just before (same hyperparameters); trains the MNLI model only when absent."""
    def run(model_dir: Path) -> dict[str, Any]:
        found = read_result(cfg, model_dir.name, mnli_job)
        mnli, path = found.value or {}, found.path  # missing, damaged or stale: train again
        same = mnli.get("hp") == hp.model_dump(mode="json") and isinstance(mnli.get("mismatched"), dict)
        if not same:
            return train(model_dir)
        mm = mnli["mismatched"]
        return {"task": "mnli-mm", **{k: mm[k] for k in ("metric", "score", "metrics", "n_eval", "eval_file")},
                "from_mnli_model": str(path), "model": mnli.get("model"), "hp": mnli["hp"]}
    return run


def curve_checkpoints(cfg: Config, name: str) -> list[tuple[int, Path]]:
    """(word count, HF folder) of each checkpoint train.save_at_words kept for model ``name``, in order."""
    folder = cfg.words_checkpoint_dir(name)
    if not folder.is_dir():
        return []
    return sorted((int(p.name), p) for p in folder.iterdir() if p.name.isdigit() and (p / "config.json").exists())


#: The official fast sets (BabyLM 2025/2026 ``evaluation_data/fast_eval``) the curves score under eval.fast_data.
FAST_SETS = {"blimp": "blimp_fast", "supplement": "supplement_fast", "ewok": "ewok_fast",
             "entity_tracking": "entity_tracking_fast"}


def pair_tasks() -> tuple[tuple[str, str], ...]:
    """(name, label) of the minimal-pair tasks, in registry order: the report's and the card's pair tables."""
    return tuple((e.name, e.title) for e in REGISTRY if e.pairs)


def curve_panels() -> tuple[tuple[str, str], ...]:
    """(key, axis label) of the learning-curve panels: dev CE, then each task of the fast suite."""
    return (("dev_ce", "dev CE (nats/token)"), *((t, f"{evaluator(t).title} %") for t in FAST_SETS))


def curve_tasks(ev: EvalConfig) -> dict[str, str]:
    """{task: data} the protocol's fast suite scores at every checkpoint: the official fast sets found under
    ``eval.fast_data``, else the full data of every zero-shot task the config names."""
    out = {}
    for task, folder in FAST_SETS.items():
        if ev.fast_data:
            path = Path(ev.fast_data).expanduser() / folder
            if path.exists():
                out[task] = str(path)
        elif getattr(ev, task):
            out[task] = getattr(ev, task)
    return out


def _fast_scorer(task: str) -> Scorer:
    return score_blimp if task in ("blimp", "supplement") else _completion_scorer(task)


def _curve_jobs(cfg: Config) -> list[Job]:
    ev = cfg.eval
    if not ev.curves or not any(m.train.save_at_words for m in cfg.models()):
        return []
    tasks = curve_tasks(ev)

    def run(model_dir: Path) -> dict[str, Any]:
        points = []
        for words, ck in curve_checkpoints(cfg, model_dir.name):
            point: dict[str, Any] = {"words": words, "checkpoint": str(ck), "results": {}}
            if ev.perplexity:
                point["dev_ce"] = _perplexity(ck, cfg)["ce_nats_per_token"]
            for task, data in tasks.items():
                result = _fast_scorer(task)(ck, data, ev)
                point[task] = result["headline"]
                point["results"][task] = result
            points.append(point)
        return {"points": points, "tasks": tasks}

    def inputs(model_dir: Path) -> tuple[list[Path], list[Path]]:
        data = (dev_data(cfg) if ev.perplexity else []) + [data_path(d) for d in tasks.values()]
        return [ck for _, ck in curve_checkpoints(cfg, model_dir.name)], data

    settings = {"words": {m.name: m.train.save_at_words for m in cfg.models()}, "perplexity": ev.perplexity,
                "tasks": {t: _data_id(d) for t, d in tasks.items()}, **blimp_settings(ev),
                **{k: v for t in tasks if t not in ("blimp", "supplement") for k, v in completion_settings(ev, t).items()}}
    return [Job("curve.json", None, settings, run, inputs)]


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


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported when first called (the scorers pull in torch and transformers)."""
    return lambda *args, **kwargs: getattr(importlib.import_module(module), name)(*args, **kwargs)


def _completion_cli(task: str) -> DataScorer:
    return DataScorer(_completion_scorer(task), _lazy("babyllama.evaluate.completions", "format_completion_table"))


def _wug_cli(task: str) -> DataScorer:
    return DataScorer(_wug_scorer(task), _lazy("babyllama.evaluate.wug", "format_wug_table"))


#: The WUG tasks' official code is BabyLM 2025's; the 2026 pipeline dropped them.
_WUG_DROPPED = {"babylm-2026": "babylm-2025"}


def _get(key: str) -> Callable[[dict[str, Any], EvalConfig], float | None]:
    return lambda r, ev: r.get(key)


def _pairs_headline(result: dict[str, Any], ev: EvalConfig) -> float | None:
    """The macro the protocol reports: over phenomena or over paradigms (``eval.aggregation``)."""
    return result.get(f"macro_{ev.aggregation}", result.get("headline"))


REGISTRY: list[Evaluator] = [
    Evaluator("perplexity", "eval.perplexity", _perplexity_jobs, _get("ce_nats_per_token"), percent=False,
              metric="cross_entropy", measure="cross-entropy"),
    Evaluator("blimp", "eval.blimp", _pairs_jobs("blimp", "BLiMP %"), _pairs_headline, chance=0.5,
              label="BLiMP", pairs=True, download="run `babyllama download blimp` (it fetches BLiMP into ~/.cache/babyllama/blimp)"),
    Evaluator("supplement", "eval.supplement", _pairs_jobs("supplement", "supplement %"), _pairs_headline, chance=0.5,
              label="BLiMP supplement", pairs=True),
    Evaluator("ewok", "eval.ewok", _completion_jobs("ewok", "EWoK %"), _get("headline"), cli=_completion_cli("ewok"),
              chance=0.5, label="EWoK", cli_options=(CliOption(("--ewok-pairing",), {
                  "choices": ["targets", "contexts"], "default": None,
                  "help": "targets: one context, two targets (2024/2025); contexts: two contexts, one target (2026)"}),)),
    Evaluator("entity_tracking", "eval.entity_tracking", _completion_jobs("entity_tracking", "entity tracking %"),
              _get("headline"), cli=_completion_cli("entity_tracking"), aliases=["entity-tracking"],
              cli_options=(CliOption(("--skip-nothing",), {
                  "dest": "entity_skip_nothing", "action": "store_const", "const": True, "default": None,
                  "help": "leave out items with an option containing \"nothing\" (2026)"}),)),
    Evaluator("comps", "eval.comps", _completion_jobs("comps", "COMPS %"), _get("headline"), cli=_completion_cli("comps"),
              chance=0.5),
    Evaluator("global_piqa", "eval.global_piqa", _completion_jobs("global_piqa", "GlobalPIQA %"), _get("headline"),
              cli=_completion_cli("global_piqa"), aliases=["global-piqa"]),
    # The reading scores are already percentages (of the R² left to explain); the report's columns take fractions.
    Evaluator("reading", "eval.reading",
              _data_jobs("reading", "reading ΔR² %", lambda ev: {"batch_size": ev.batch_size}, _score_reading,
                         _read_reading), lambda r, ev: r["headline"] / 100 if "headline" in r else None,
              metric="delta_r2", measure="share of the explainable reading-time R² (ΔR²)"),
    # Spearman ρ between the model's and people's ratios (a fraction, shown × 100); BabyLM 2025 only.
    Evaluator("wug_adj", "eval.wug_adj", _wug_jobs("wug_adj", "WUG adj ρ %"), _get("headline"), cli=_wug_cli("wug_adj"),
              metric="spearmanr", measure="Spearman correlation with human ratios", aliases=["wug-adj"],
              dropped=_WUG_DROPPED),
    Evaluator("wug_past", "eval.wug_past", _wug_jobs("wug_past", "WUG past ρ %"), _get("headline"),
              cli=_wug_cli("wug_past"), metric="spearmanr", measure="Spearman correlation with human ratios",
              aliases=["wug-past"], dropped=_WUG_DROPPED),
    Evaluator("finetune", "eval.finetune", _finetune_jobs, _get("score"), measure="score"),
    Evaluator("curves", "eval.curves", _curve_jobs, lambda r, ev: None),
]


def evaluator(name: str) -> Evaluator:
    for e in REGISTRY:
        if name == e.name or name in e.aliases:
            return e
    raise KeyError(name)


#: What an existing model (`teachers[].from`) is not evaluated on: it was not trained here, so it has no
#: checkpoints for curves, and fine-tuning a model trained elsewhere says nothing about this experiment.
NOT_FOR_EXISTING = ("finetune", "curves")


def jobs(cfg: Config, name: str | None = None) -> list[tuple[Evaluator, Job]]:
    """Every result file this config asks for, per model, in registry order (none of a task its protocol
    no longer scores; ``name``: of that model, which for an existing teacher leaves out NOT_FOR_EXISTING)."""
    existing = name is not None and any(t.name == name for t in cfg.external_teachers)
    return [(e, j) for e in REGISTRY if e.scores_under(cfg.eval.protocol) and not (existing and e.name in NOT_FOR_EXISTING)
            for j in e.jobs(cfg)]


def model_folder(cfg: Config, name: str) -> Path:
    """Where model ``name`` is read from: ``models/<name>/`` when trained here, the folder its `from` names
    (or the cached Hub snapshot) for an existing teacher."""
    from babyllama.existing import model_folder as existing_folder

    source = next((t.from_ for t in cfg.external_teachers if t.name == name), None)
    return cfg.model_dir(name) if source is None else existing_folder(source, f"teachers.{name}.from")


def check_data(cfg: Config) -> None:
    """Read and validate every data set the evaluation will score, so a typo in ``eval.blimp`` or a bad
    item stops the run in one line before the first model trains, not after all training. Data the
    protocol does not score is named in a note line."""
    for note in dropped_notes(cfg):
        print(f"[run] note: {note}", flush=True)
    for e, job in jobs(cfg):
        if job.check is not None:
            try:
                job.check()
            except UserError as err:
                hint = f"; {e.download}, or run without it: --set {e.switch}=null" if e.download else ""
                raise UserError(f"{e.switch}: {err}{hint if 'not found' in str(err) else ''}") from None


def result_key(job: Job) -> str:
    """How a result is named to its readers: its file without ``.json`` ('blimp', 'finetune/cola')."""
    return job.file.removesuffix(".json")


@dataclass(frozen=True)
class Result:
    """A result file as the reader found it: its numbers when verified, else why it is not shown."""

    path: Path
    value: dict[str, Any] | None
    problem: str | None = None  # None: verified; else 'missing', 'damaged (...)' or 'stale (...)'


def result_path(cfg: Config, model: str, job: Job) -> Path:
    return cfg.out / "eval" / model / job.file


def current_inputs(cfg: Config, model: str, job: Job) -> dict[str, Any]:
    """The ``_inputs`` record a result of ``job`` for ``model`` must hold to be current (provenance)."""
    from babyllama.evaluate.provenance import inputs_record

    models, data = job.inputs(model_folder(cfg, model))
    return inputs_record(models, data, job.settings)


def read_result(cfg: Config, model: str, job: Job) -> Result:
    """The one reader of evaluation results: a result counts only when it parses and the sha256 sums of the
    model files and data it records match the files on disk now, with the same settings."""
    from babyllama.evaluate.provenance import difference

    path = result_path(cfg, model, job)
    if not path.is_file():
        return Result(path, None, "missing")
    try:
        value = read_json(path)
    except ValueError:
        return Result(path, None, "damaged (not valid JSON)")
    except OSError as e:
        return Result(path, None, f"damaged (unreadable: {e.strerror or e})")
    if not isinstance(value, dict):
        return Result(path, None, "damaged (not a JSON object)")
    try:
        why = difference(value.get("_inputs"), current_inputs(cfg, model, job))
    except (UserError, OSError) as e:
        why = f"its inputs cannot be read now: {e}"
    return Result(path, None, f"stale ({why})") if why else Result(path, value)


def write_result(cfg: Config, model: str, job: Job, inputs: dict[str, Any], value: dict[str, Any]) -> None:
    """Write a result with the record of what it was computed from (``inputs``, taken before computing)."""
    from babyllama.io import atomic_write_json

    atomic_write_json(result_path(cfg, model, job), {**value, "_inputs": inputs})


def model_result_files(cfg: Config, name: str) -> list[tuple[Evaluator, Job, Result]]:
    """Every result the config asks for of model ``name``, each as the reader found it (with why not, if not)."""
    return [(e, j, read_result(cfg, name, j)) for e, j in jobs(cfg, name)]


def model_results(cfg: Config, name: str) -> dict[str, dict[str, Any]]:
    """{result key: result} of model ``name``: every result the config asks for that the reader verifies."""
    return {result_key(j): r.value for _, j, r in model_result_files(cfg, name) if r.value is not None}


def model_headlines(cfg: Config, name: str, results: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """{result key: headline under the config's protocol} of model ``name`` (results without one left out),
    from its verified results (``results``: model_results, when the caller has them already).

    The one place a headline is read: the report, the sweep report and the model card all call this.
    """
    results = model_results(cfg, name) if results is None else results
    out = {}
    for e, job in jobs(cfg, name):
        result = results.get(result_key(job))
        value = e.headline(result, cfg.eval) if result is not None else None
        if value is not None:
            out[result_key(job)] = float(value)
    return out


def result_notes(cfg: Config, name: str, results: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Lines a reader needs beside model ``name``'s headlines: what a scorer did to over-long inputs, its ties
    and their other readings, the items it left out (``results``: model_results, when the caller has them)."""
    results = model_results(cfg, name) if results is None else results
    out = []
    for e, job in jobs(cfg, name):
        result = results.get(result_key(job))
        if job.column is None or result is None:
            continue
        title = job.column.removesuffix(" %")
        out += [f"{title}: {note}" for note in result.get("notes") or []]
        by, ties, value = result.get("headline_by_ties"), result.get("ties"), e.headline(result, cfg.eval)
        if by and ties and value is not None:
            out.append(f"{title}: {ties} ties; headline {100 * value:.1f} (ties {result['protocol'].get('ties')}), "
                       f"{100 * by['random']:.1f} by a draw seeded {result['protocol'].get('seed', 0)}, "
                       f"{100 * by['expected']:.1f} by expected credit")
        if result.get("skipped"):
            out.append(f"{title}: {result['skipped']} items left out (an option contains \"nothing\")")
    ppl = results.get("perplexity") or {}
    if ppl.get("tokenizer") == "own":
        out.append(f"dev loss: read with its own tokenizer ({ppl['own_dev_tokens']:,} of its tokens for the dev text's "
                   f"{ppl['dev_words']:,} words, {ppl['ce_nats_per_own_token']:.4f} nats per one of them), so only its "
                   "bits/word compares with the other models")
    return out


def headline_columns(cfg: Config) -> dict[str, str]:
    """{result key: column title} of every headline shown as a column (perplexity and curves are shown apart)."""
    return {result_key(j): j.column for _, j in jobs(cfg) if j.column is not None}


def headline_measures(cfg: Config) -> dict[str, tuple[str, str]]:
    """{result key: (metric id, what the headline is in words)} of every headline column."""
    return {result_key(j): (e.metric, e.measure) for e, j in jobs(cfg) if j.column is not None}


def pair_items(result: dict[str, Any], ev: EvalConfig) -> dict[str, str] | None:
    """Per-pair outcomes grouped as the headline averages them (for paired bootstraps); None when the file
    does not carry them in that grouping (files written before paradigm_items was recorded)."""
    return result.get("items") if ev.aggregation == "phenomena" else result.get("paradigm_items")


def is_embedded(result: dict[str, Any]) -> bool:
    """Whether a minimal-pair result was scored on the subset shipped with babyllama."""
    from babyllama.evaluate.formats import EMBEDDED

    data = str(result.get("data", "?"))
    return data.startswith("embedded:") or Path(data) in EMBEDDED.values()


def chance_rates(cfg: Config) -> dict[str, float]:
    """{result key: chance headline} of the headlines a guessing model would score at a known rate."""
    return {result_key(j): e.chance for e, j in jobs(cfg) if e.chance is not None and j.column is not None}


def item_count(result: dict[str, Any]) -> int | None:
    """How many items a zero-shot result scored (pairs or completion items)."""
    n = result.get("n_pairs", result.get("n_items"))
    return n if isinstance(n, int) else None
