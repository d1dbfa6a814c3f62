"""`babyllama run`: the whole paper as a graph of stages that resume and skip by identity.

Stages, in order: ``prepare`` → ``teacher:<name>`` (each teacher) → ``distill`` → ``control`` →
``evaluate`` → ``report``. Each stage's fingerprint is its identity (babyllama.identity: the config it
depends on and the data or models it reads from); ``<out_dir>/run_state.json`` records, per stage, the
fingerprint it ran with, whether it finished, and how long it took. How a stage is skipped is its
``Skip``: a finished training stage whose fingerprint is unchanged is skipped; an unfinished one with
the same fingerprint resumes (the training loop keeps its own resumable checkpoints); a changed
fingerprint discards the stage's outputs and redoes it. Evaluation keeps its outputs: each result records
the sha256 sums of the model files and data it was computed from, and the evaluate stage is up to date
only while the registry's reader verifies every one (a missing, damaged or stale result is redone);
preparation and the report run every time. Every input of the config is read and checked before the
first stage (check_inputs).

A finished model is trusted only while its files match the sha256 sums of its checkpoint.json: a
damaged one is reported and its stage redone (from its checkpoints, when they are intact, that is only
a copy). A published model is never deleted before the stage that replaces it has succeeded; only the
resumable state of a stale stage is discarded up front.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from babyllama import distributed, identity, progress, side_by_side
from babyllama.config import Config
from babyllama.errors import UserError
from babyllama.roles import EVALUATE, PREPARE, REPORT, Member, Role, members
from babyllama.run_state import RunState


class Skip(Enum):
    """How a stage is skipped: the one thing `run_pipeline` asks a stage before running it."""

    #: Skipped when it finished with the same identity and its outputs exist; otherwise its outputs are
    #: discarded and it runs again (a training stage resumes from its own checkpoints when unfinished).
    UNCHANGED = "unchanged"
    #: Skipped when it finished with the same identity; otherwise it runs again over its kept outputs,
    #: each of which carries its own identity (evaluation: only missing or stale results are redone).
    UNCHANGED_KEEP_OUTPUTS = "unchanged, outputs kept"
    #: Runs every time and skips its own work when its inputs are unchanged (data preparation).
    BY_ITSELF = "by itself"
    #: Runs every time (the report: cheap, and it reads whatever is on disk).
    NEVER = "never"


@dataclass
class Stage:
    name: str
    run: Callable[[], None]
    fingerprint: Callable[[], str]  # its identity, computed when the stage is reached (it may read earlier outputs)
    outputs: list[Path] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)  # stages whose outputs this one reads
    main_only: bool = False  # data preparation, evaluation and reporting run on rank 0 only
    published: list[Path] = field(default_factory=list)  # finished models: verified, replaced only on success
    skip: Skip = Skip.UNCHANGED
    member: Member | None = None  # the model a training stage trains
    check: Callable[[], str | None] | None = None  # why its finished outputs cannot be trusted (None: they can)

    @property
    def always_runs(self) -> bool:
        return self.skip in (Skip.BY_ITSELF, Skip.NEVER)


def plan(cfg: Config) -> list[Stage]:
    """The ordered stages of this config, each with its identity and outputs.

    Training identities are the training loop's own resume identity (babyllama.identity: every setting
    that changes the weights, not logging cadence) plus the prepared data's hash, so an edited corpus or
    a re-run `prepare` redoes the models, and a changed log interval does not.
    """
    from babyllama.data.prepare import prepare
    from babyllama.ledger import announce as announce_ledger
    from babyllama.training import training_spec

    if cfg.student is None:
        raise UserError("run: the config has no `student` section; the run needs a student to distil into")
    if not cfg.teachers:
        raise UserError("run: the config has no `teachers`; distillation needs at least one teacher")

    def prepare_and_announce() -> None:  # the ledger needs the prepared pool; its verdicts open the run
        prepare(cfg)
        announce_ledger(cfg)

    stages = [Stage(PREPARE, prepare_and_announce, lambda: identity.data_identity(cfg.data_dir), [cfg.data_dir],
                    main_only=True, skip=Skip.BY_ITSELF)]
    team = [m for m in members(cfg) if m.stage is not None]  # external teachers are never trained here
    teacher_stages = [m.stage for m in team if m.role is Role.TEACHER]
    for m in team:  # one training stage per model, in the order roles.members gives
        # The spec (and so the identity) is made once, when its stage is reached: the student's reads the
        # teachers' weight hashes, so a retrained teacher redoes the student. The stage fits that very spec.
        spec = cache(lambda n=m.name: training_spec(cfg, n))
        deps = [PREPARE, *teacher_stages] if m.role is Role.STUDENT else [PREPARE]
        stages.append(Stage(m.stage, lambda s=spec: s().fit(), cache(lambda s=spec: s().fingerprint()),
                            [cfg.model_dir(m.name), cfg.checkpoint_dir(m.name)], deps=deps,
                            published=[cfg.model_dir(m.name)], member=m))
    trained = stages[1:]

    def model_ids() -> dict[str, str]:
        return {m.name: s.fingerprint() for m, s in zip(team, trained, strict=True)}

    @cache
    def eval_id() -> str:
        return identity.evaluation_identity(model_ids(), cfg.eval)

    names = [m.name for m in members(cfg)]  # existing teachers too: they are evaluated, never trained
    stages.append(Stage(EVALUATE, lambda: evaluate_all(cfg, names), eval_id, [cfg.out / "eval"],
                        deps=[s.name for s in trained], main_only=True, skip=Skip.UNCHANGED_KEEP_OUTPUTS,
                        check=lambda: unverified_results(cfg, names)))
    stages.append(Stage(REPORT, lambda: _report(cfg), eval_id, [], deps=[EVALUATE], main_only=True, skip=Skip.NEVER))
    return stages


def _dependents(stages: list[Stage], roots: set[str]) -> set[str]:
    """The given stages and every stage that reads, directly or not, from one of them."""
    out = set(roots)
    for s in stages:  # stages are in dependency order, so one pass suffices
        if any(d in out for d in s.deps):
            out.add(s.name)
    return out


def check_inputs(cfg: Config) -> None:
    """Every path and data set of the config resolved and read before any stage works: the corpus (its
    layout; `prepare`, the first stage, refuses files that are not text) and the evaluation data
    (evaluate/registry.check_data)."""
    from babyllama.data.corpora import resolve_corpus
    from babyllama.evaluate.registry import check_data

    resolve_corpus(cfg.data)
    check_data(cfg)


def _expand_force(stages: list[Stage], force: list[str]) -> tuple[set[str], set[str]]:
    """(forced stages, stages to redo): each forced stage ('teachers' = all of them) and its dependents."""
    def teacher(s: Stage) -> bool:
        return s.member is not None and s.member.role is Role.TEACHER

    def called(s: Stage) -> str:  # a teacher's stage is forced by the teacher's name
        return s.member.name if teacher(s) and s.member else s.name

    roots: set[str] = set()
    for f in force:
        hits = [s.name for s in stages if f in (s.name, called(s)) or (f == "teachers" and teacher(s))]
        if not hits:
            valid = ", ".join(["teachers", *[called(s) for s in stages]])
            raise UserError(f"--force {f!r}: no such stage (stages: {valid})")
        roots.update(hits)
    return roots, _dependents(stages, roots)


def run_pipeline(cfg: Config, force: list[str] | None = None, only: list[str] | None = None,
                 config_arg: str | None = None) -> dict[str, Any]:
    """Run every stage that is not already done; print times per stage, the final table and the verdict.

    ``only`` restricts the run to the named stages (e.g. a sweep preparing the data and shared teachers).
    ``config_arg``: the config as the user named it, for the closing `babyllama sweep` hint.
    """
    if _may_go_side_by_side(cfg) and _teachers_due(cfg, force or []) > 1:
        side_by_side.warm_up()  # the teachers' fork server imports torch while the run plans and prepares the data
    try:
        return _run_stages(cfg, force or [], only, config_arg)
    finally:
        side_by_side.shut_down()  # where the teachers never came to run (a failure before them, all up to date)


def _run_stages(cfg: Config, force: list[str], only: list[str] | None, config_arg: str | None) -> dict[str, Any]:
    """The body of run_pipeline (while the fork server, if any, runs)."""
    stages = plan(cfg)
    check_inputs(cfg)  # every rank: read-only, and all of them stop alike on a bad input
    if only is not None:
        stages = [s for s in stages if s.name in only]
    forced, redo = _expand_force(stages, force)
    if any(s.name == EVALUATE for s in stages) and distributed.is_main_process():
        note_missing_blimp(cfg)
    if distributed.is_distributed():  # under torchrun: join the group before any barrier (torch loads only then)
        from babyllama.runtime import training_device

        distributed.init(training_device())
    state = RunState(cfg.out)
    main = distributed.is_main_process()
    timings: dict[str, float] = {}
    for group in _groups(stages):
        if len(group) > 1 and _may_go_side_by_side(cfg):
            to_run = [s for s in group if not _skip_or_start(s, state, s.name in forced, s.name in redo)]
            timings.update({s.name: 0.0 for s in group})
            _run_side_by_side(cfg, to_run, state, timings)
            continue
        for stage in group:
            skip = main and _skip_or_start(stage, state, stage.name in forced, stage.name in redo)
            # Rank 0 decides, so every rank takes the same branch (a training stage is a collective).
            if distributed.broadcast_object(skip):
                timings[stage.name] = 0.0
                continue
            timings[stage.name] = _run_stage(stage, state, main)
    return _print_summary(cfg, timings, config_arg) if main and only is None else {}


def _teachers_due(cfg: Config, force: list[str]) -> int:
    """How many teachers' stages the run state does not record as finished or --force redoes (naming them,
    'teachers' or 'prepare'): a guess, before any identity can be computed, of whether they will train side by side."""
    if cfg.student is None or not cfg.teachers:
        return 0  # plan() says what is missing
    state = RunState(cfg.out)
    return sum(1 for m in members(cfg) if m.stage is not None and m.role is Role.TEACHER
               and (bool({"teachers", PREPARE, m.name, m.stage} & set(force)) or state.finished_with(m.stage) is None))


def _groups(stages: list[Stage]) -> list[list[Stage]]:
    """The stages in order, the teachers' training stages as one group (what `side_by_side` may train at the
    same time: none reads another's outputs, and they take about as long as each other; the control is far
    shorter than the distillation, so beside it the distillation would finish alone on one thread)."""
    def teacher(s: Stage) -> bool:
        return s.member is not None and s.member.role is Role.TEACHER

    groups: list[list[Stage]] = []
    for s in stages:
        if teacher(s) and groups and teacher(groups[-1][0]):
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def _may_go_side_by_side(cfg: Config) -> bool:
    """Whether `side_by_side` allows stages at the same time here, before anything is loaded (the device is
    asked only once two stages are due: a finished run plans and skips without torch)."""
    from babyllama import threads

    policy = threads.current()
    n = policy.threads if policy else 1
    return not distributed.is_distributed() and (cfg.side_by_side is True or (cfg.side_by_side == "auto" and n >= 2))


def _run_side_by_side(cfg: Config, stages: list[Stage], state: RunState, timings: dict[str, float]) -> None:
    """Train ``stages`` at the same time, each in its own process with a share of the threads (babyllama.side_by_side);
    one alone, or on a GPU, here as usual."""
    from babyllama import side_by_side, threads

    policy = threads.current()
    n_threads = policy.threads if policy else 1
    at_once = 1
    if len(stages) > 1:  # only then is the device asked (torch loaded): a finished run skips without it
        from babyllama.runtime import training_device

        at_once = side_by_side.decide(cfg.side_by_side, n_threads, len(stages),
                                      on_cpu=training_device().type == "cpu", distributed=False)
    if at_once < 2:
        side_by_side.shut_down()
        for stage in stages:
            timings[stage.name] = _run_stage(stage, state, True)
        return
    share = max(1, n_threads // at_once)
    names = ", ".join(s.name for s in stages)
    print(f"[run] {names}: side by side, {at_once} at a time, {share} CPU thread{'s' * (share != 1)} each "
          f"(side_by_side: {str(cfg.side_by_side).lower()})", flush=True)

    def finished(stage: Stage) -> Callable[[float], None]:
        def record(seconds: float) -> None:
            prev = state.record(stage.name).get("seconds", 0.0)
            state.write(stage.name, stage.fingerprint(), True, prev + seconds)
            timings[stage.name] = seconds
            print(f"[run] {stage.name}: done in {seconds:.1f}s", flush=True)
        return record

    start = time.perf_counter()
    with side_by_side.config_copy(cfg.out, cfg.to_yaml()) as config_file:
        jobs = [side_by_side.Job(s.name, side_by_side.stage_argv(config_file, s.member.name, share), finished(s))
                for s in stages]
        side_by_side.run_jobs(jobs, at_once)
    wall = time.perf_counter() - start
    timings[f"({len(stages)} teachers side by side)"] = wall
    print(f"[run] {names}: done in {wall:.1f}s side by side", flush=True)


def note_missing_blimp(cfg: Config) -> None:
    """At start, plainly: a run whose config names no BLiMP data will score none (the data it does name
    was checked by check_inputs)."""
    if not cfg.eval.blimp:
        print("[run] note: eval.blimp is null, so this run scores no BLiMP (set eval.blimp: embedded:blimp for the "
              "shipped 6,700-pair subset, or a folder after `babyllama download blimp`)", flush=True)


def _skip_or_start(stage: Stage, state: RunState, forced: bool, redo: bool) -> bool:
    """Rank 0: True when ``stage`` is up to date; else record it as started (discarding outputs that
    are stale, as its Skip says) and say why it runs."""
    rec = state.record(stage.name)
    fingerprint = None if stage.always_runs else stage.fingerprint()
    keep_outputs = stage.skip is Skip.UNCHANGED_KEEP_OUTPUTS
    done = rec.get("done") and rec.get("fingerprint") == fingerprint and (keep_outputs or all(p.exists() for p in stage.outputs))
    if done and not redo and _damaged(stage):
        done = False
    if done and not redo and not stage.always_runs:
        print(f"[run] {stage.name}: up to date, skipped ({rec.get('seconds', 0):.1f}s when it ran)", flush=True)
        return True
    stale = redo or (not stage.always_runs and rec.get("fingerprint") not in (None, fingerprint))
    if stale and (forced or not keep_outputs):
        for p in stage.outputs:
            if p in stage.published:
                continue  # replaced atomically by the stage itself, once it has succeeded
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    state.write(stage.name, fingerprint, False, 0.0 if stale else rec.get("seconds", 0.0))
    verb = "redoing" if stale and rec else ("resuming" if rec and not rec.get("done") else "running")
    if stage.skip is Skip.BY_ITSELF:
        verb = "running (it skips its own work when its inputs are unchanged)"
    elif stage.skip is Skip.NEVER:
        verb = "running"
    print(f"[run] {stage.name}: {verb}", flush=True)
    return False


def _run_stage(stage: Stage, state: RunState, main: bool) -> float:
    """Run ``stage`` (on rank 0 alone when it is main_only), record it as done; its seconds."""
    start = time.perf_counter()
    if not stage.main_only or main:
        stage.run()
    distributed.barrier()
    seconds = time.perf_counter() - start
    if main:
        prev = state.record(stage.name).get("seconds", 0.0)
        fingerprint = stage.fingerprint()  # after the run: a stage that makes its inputs (prepare) is now hashable
        state.write(stage.name, fingerprint, True, prev + seconds)
        print(f"[run] {stage.name}: done in {seconds:.1f}s", flush=True)
    return seconds


def outdated_stage(cfg: Config) -> str | None:
    """The first trained or evaluate stage of ``cfg`` that run_state.json does not record as finished with
    the identity the config gives it now (with why), None when all are: a finished run of this very config."""
    state = RunState(cfg.out)
    for stage in plan(cfg):
        if stage.always_runs:
            continue
        finished = state.finished_with(stage.name)
        if finished is None:
            return f"its stage {stage.name} has not finished"
        if finished != stage.fingerprint():
            return f"its stage {stage.name} ran under another config or data"
    return None


def _print_summary(cfg: Config, timings: dict[str, float], config_arg: str | None = None) -> dict[str, Any]:
    """The run's ending on the console: the table, the time per stage, the verdict and where the report is."""
    from babyllama.report import comparison_table, summarize

    summary = summarize(cfg.out)
    print()
    print(comparison_table(summary))
    print()
    print("Time per stage (this invocation):")
    for name, seconds in timings.items():
        print(f"  {name:<24} {seconds:8.1f}s{'  (skipped)' if seconds == 0.0 else ''}")  # side by side: their wall too
    print("\nVerdict (student - other model, one seed):")
    for line in verdict_lines(summary["verdict"]):
        print(line)
    if config_arg:  # `babyllama run`, not a sweep's member
        print()
        print("\n".join(verdict_lines([
            f"One seed: these intervals cover the dev windows and BLiMP items, not training noise; for an interval "
            f"over seeds run `babyllama sweep {config_arg} --seeds 3`."], bullet="")))
    print(f"\nReport: {cfg.out / 'report.md'} and {cfg.out / 'report.html'}")
    return summary


def verdict_lines(sentences: list[str], width: int | None = None, bullet: str = "  - ") -> list[str]:
    """Each sentence wrapped to the terminal (at most 100 columns), as a bullet, for reading in a console; a
    word longer than a line (a long path in a command to copy) is kept whole."""
    import textwrap

    width = width or min(100, shutil.get_terminal_size((100, 24)).columns)
    out = []
    for s in sentences:
        out += textwrap.wrap(s.replace("`", ""), width, initial_indent=bullet, subsequent_indent=" " * len(bullet),
                             break_on_hyphens=False, break_long_words=False)
    return out


def _damaged(stage: Stage) -> bool:
    """True (and said) when a finished model of the stage no longer matches its checkpoint.json record, or
    the stage's own check finds an output it cannot trust (a missing, damaged or stale result)."""
    from babyllama.train.checkpoint import damaged_file

    for folder in stage.published:
        bad = damaged_file(folder)
        if bad is not None:
            print(f"[run] {folder / bad} does not match its checkpoint.json record (damaged): stage {stage.name} "
                  "will redo it", flush=True)
            return True
    problem = stage.check() if stage.check else None
    if problem:
        print(f"[run] {problem}: stage {stage.name} will redo it", flush=True)
        return True
    return False


# -- evaluation of every model -------------------------------------------------------------------------


def evaluate_all(cfg: Config, names: list[str]) -> None:
    """Every evaluator the config switches on (evaluate/registry.py), for the named models; results under
    <out_dir>/eval/.

    A result is computed again unless the registry's reader verifies it (it parses, and the sha256 sums of
    the model files and data it records match the files now), so an interrupted evaluation resumes with
    the next missing result, and a deleted, damaged or stale one is redone.
    """
    from babyllama.evaluate.registry import current_inputs, jobs, model_folder, read_result, write_result

    own = {name: {j.file for _, j in jobs(cfg, name)} for name in names}  # an existing teacher has fewer
    for _, job in jobs(cfg):  # job by job: one that scores several models at once reads its data once
        what = job.file.removesuffix(".json")
        pending = []
        for name in [n for n in names if job.file in own[n]]:
            found = read_result(cfg, name, job)
            if found.value is not None:
                continue
            why = "" if found.problem == "missing" else f" (the result on disk is {found.problem})"
            print(f"[run] evaluate {name}: {what}{why}", flush=True)
            pending.append((name, current_inputs(cfg, name, job)))  # before computing: what it is computed from
        label = what.replace("finetune/", "")
        if job.run_many is not None and len(pending) > 1:
            with progress.current(f"{len(pending)} models {label}"):  # the bar's label
                # each result is written as it comes, so an interrupted evaluation keeps the finished ones
                for (name, inputs), result in zip(pending, job.run_many([model_folder(cfg, n) for n, _ in pending]),
                                                  strict=True):
                    write_result(cfg, name, job, inputs, result)
            continue
        for name, inputs in pending:
            with progress.current(f"{name} {label}"):
                write_result(cfg, name, job, inputs, job.run(model_folder(cfg, name)))


def unverified_results(cfg: Config, names: list[str]) -> str | None:
    """The first result of the evaluate stage the reader does not verify, with why (None: all verified)."""
    from babyllama.evaluate.registry import jobs, read_result

    for name in names:
        for _, job in jobs(cfg, name):
            found = read_result(cfg, name, job)
            if found.value is None:
                return f"{found.path} is {found.problem}"
    return None


def _report(cfg: Config) -> None:
    from babyllama.report import build_report

    build_report(cfg.out)
