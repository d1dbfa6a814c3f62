"""`babyllama run`: the whole paper as a graph of stages that resume and skip by fingerprint.

Stages, in order: ``prepare`` → ``teacher:<name>`` (each teacher) → ``distill`` → ``control`` →
``evaluate`` → ``report``. Each stage's fingerprint hashes the config it depends on and the
fingerprints of the stages it reads from; ``<out_dir>/run_state.json`` records, per stage, the
fingerprint it ran with, whether it finished, and how long it took. A finished stage whose fingerprint
is unchanged is skipped; an unfinished one with the same fingerprint resumes (the training loop keeps
its own resumable checkpoints); a changed fingerprint discards the stage's outputs and redoes it.

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
from functools import cache
from pathlib import Path
from typing import Any

from babyllama.config import Config
from babyllama.errors import UserError
from babyllama.io import atomic_write_json, read_json, stable_hash
from babyllama.train import distributed

STATE_FILE = "run_state.json"


@dataclass
class Stage:
    name: str
    run: Callable[[], None]
    fingerprint: Callable[[], str]  # computed when the stage is reached: it may read earlier stages' outputs
    outputs: list[Path] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)  # stages whose outputs this one reads
    main_only: bool = False  # data preparation, evaluation and reporting run on rank 0 only
    always: bool = False  # stages that run every time (prepare skips itself when its inputs are unchanged)
    reuse_outputs: bool = False  # outputs carry their own fingerprints: keep them when the stage is redone
    published: list[Path] = field(default_factory=list)  # finished models: verified, replaced only on success


def plan(cfg: Config) -> list[Stage]:
    """The ordered stages of this config, each with its fingerprint and outputs.

    Training fingerprints are the training loop's own resume identity (checkpoint.run_components: every
    setting that changes the weights, not logging cadence) plus the prepared data's hash, so an edited
    corpus or a re-run `prepare` redoes the models, and a changed log interval does not.
    """
    from babyllama.data.prepare import prepare
    from babyllama.data.tokens import read_manifest
    from babyllama.distill.run import distill as distill_student
    from babyllama.distill.run import distillation_fingerprint
    from babyllama.train.checkpoint import run_components
    from babyllama.train.objective import LMObjective
    from babyllama.train.pretrain import train_model

    if cfg.student is None:
        raise UserError("run: the config has no `student` section; the run needs a student to distil into")
    if not cfg.teachers:
        raise UserError("run: the config has no `teachers`; distillation needs at least one teacher")

    def data_hash() -> str:
        return str(read_manifest(cfg.data_dir)["data_hash"])

    # Each fingerprint is computed once, when its stage is reached (after the stages it reads from).
    def lm_fp(name: str) -> Callable[[], str]:
        windows = cfg.student_windows if name == cfg.control_name else None  # the control shares the student's
        return cache(lambda: stable_hash({"data": data_hash(), "run": run_components(
            cfg, cfg.model(name), LMObjective().fingerprint(), windows)}))

    @cache
    def distill_fp() -> str:
        # Includes the teachers' weight hashes, so a retrained teacher redoes the student.
        return stable_hash({"data": data_hash(), "run": run_components(
            cfg, cfg.student, distillation_fingerprint(cfg), cfg.student_windows)})

    stages = [Stage("prepare", lambda: prepare(cfg), data_hash, [cfg.data_dir], main_only=True, always=True)]
    teacher_stages = []
    for t in cfg.teachers:
        teacher_stages.append(f"teacher:{t.name}")
        stages.append(Stage(f"teacher:{t.name}", lambda n=t.name: train_model(cfg, n), lm_fp(t.name),
                            [cfg.model_dir(t.name), cfg.checkpoint_dir(t.name)], deps=["prepare"],
                            published=[cfg.model_dir(t.name)]))
    stages.append(Stage("distill", lambda: distill_student(cfg), distill_fp,
                        [cfg.model_dir(cfg.student.name), cfg.checkpoint_dir(cfg.student.name)],
                        deps=["prepare", *teacher_stages], published=[cfg.model_dir(cfg.student.name)]))
    if cfg.control:
        stages.append(Stage("control", lambda: train_model(cfg, cfg.control_name), lm_fp(cfg.control_name),
                            [cfg.model_dir(cfg.control_name), cfg.checkpoint_dir(cfg.control_name)], deps=["prepare"],
                            published=[cfg.model_dir(cfg.control_name)]))
    trained = [s for s in stages if s.name != "prepare"]

    def model_fps() -> dict[str, str]:
        names = [*(t.name for t in cfg.teachers), cfg.student.name, *([cfg.control_name] if cfg.control else [])]
        return dict(zip(names, (s.fingerprint() for s in trained), strict=True))

    @cache
    def eval_fp() -> str:
        return stable_hash({"models": model_fps(), "eval": cfg.eval.model_dump(mode="json")})

    stages.append(Stage("evaluate", lambda: evaluate_all(cfg, model_fps()), eval_fp, [cfg.out / "eval"],
                        deps=[s.name for s in trained], main_only=True, reuse_outputs=True))
    stages.append(Stage("report", lambda: _report(cfg), eval_fp, [], deps=["evaluate"], main_only=True, always=True))
    return stages


def _dependents(stages: list[Stage], roots: set[str]) -> set[str]:
    """The given stages and every stage that reads, directly or not, from one of them."""
    out = set(roots)
    for s in stages:  # stages are in dependency order, so one pass suffices
        if any(d in out for d in s.deps):
            out.add(s.name)
    return out


def _expand_force(stages: list[Stage], force: list[str]) -> tuple[set[str], set[str]]:
    """(forced stages, stages to redo): each forced stage ('teachers' = all of them) and its dependents."""
    names = [s.name for s in stages]
    roots: set[str] = set()
    for f in force:
        hits = [n for n in names if n == f or n == f"teacher:{f}" or (f == "teachers" and n.startswith("teacher:"))]
        if not hits:
            valid = ", ".join(["teachers", *[n.removeprefix("teacher:") for n in names]])
            raise UserError(f"--force {f!r}: no such stage (stages: {valid})")
        roots.update(hits)
    return roots, _dependents(stages, roots)


def run_pipeline(cfg: Config, force: list[str] | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Run every stage that is not already done; print times per stage and the final table.

    ``only`` restricts the run to the named stages (e.g. a sweep preparing the data and shared teachers).
    """
    stages = plan(cfg)
    if only is not None:
        stages = [s for s in stages if s.name in only]
    forced, redo = _expand_force(stages, force or [])
    distributed.init(distributed.training_device())  # under torchrun: join the group before any barrier
    state_path = cfg.out / STATE_FILE
    main = distributed.is_main_process()
    timings: dict[str, float] = {}

    for stage in stages:
        skip = False
        if main:
            state = _read_state(state_path)
            rec = state.get(stage.name, {})
            fingerprint = None if stage.always else stage.fingerprint()
            done = rec.get("done") and rec.get("fingerprint") == fingerprint and all(
                p.exists() for p in stage.outputs if not stage.reuse_outputs)
            if done and stage.name not in redo and _damaged(stage):
                done = False
            skip = bool(done) and stage.name not in redo and not stage.always
            if skip:
                print(f"[run] {stage.name}: up to date, skipped ({rec.get('seconds', 0):.1f}s when it ran)", flush=True)
            else:
                stale = stage.name in redo or (not stage.always and rec.get("fingerprint") not in (None, fingerprint))
                if stale and (stage.name in forced or not stage.reuse_outputs):
                    for p in stage.outputs:
                        if p in stage.published:
                            continue  # replaced atomically by the stage itself, once it has succeeded
                        if p.is_dir():
                            shutil.rmtree(p)
                        elif p.exists():
                            p.unlink()
                state[stage.name] = {"fingerprint": fingerprint, "done": False,
                                     "seconds": 0.0 if stale else rec.get("seconds", 0.0)}
                _write_state(state_path, state)
                verb = "redoing" if stale and rec else ("resuming" if rec and not rec.get("done") else "running")
                if stage.always:
                    verb = "running (it skips its own work when its inputs are unchanged)" if stage.name == "prepare" else "running"
                print(f"[run] {stage.name}: {verb}", flush=True)
        # Rank 0 decides, so every rank takes the same branch (a training stage is a collective).
        if distributed.broadcast_object(skip):
            timings[stage.name] = 0.0
            continue
        start = time.perf_counter()
        if not stage.main_only or main:
            stage.run()
        distributed.barrier()
        seconds = time.perf_counter() - start
        timings[stage.name] = seconds
        if main:
            state = _read_state(state_path)
            prev = state.get(stage.name, {}).get("seconds", 0.0)
            fingerprint = stage.fingerprint()  # after the run: a stage that makes its inputs (prepare) is now hashable
            state[stage.name] = {"fingerprint": fingerprint, "done": True, "seconds": prev + seconds}
            _write_state(state_path, state)
            print(f"[run] {stage.name}: done in {seconds:.1f}s", flush=True)

    if main and only is None:
        from babyllama.report import comparison_table, summarize

        summary = summarize(cfg.out)
        print()
        print(comparison_table(summary))
        print()
        print("Time per stage (this invocation):")
        for name, seconds in timings.items():
            print(f"  {name:<24} {seconds:8.1f}s{'  (skipped)' if seconds == 0.0 else ''}")
        print(f"\nReport: {cfg.out / 'report.md'} and {cfg.out / 'report.html'}")
        return summary
    return {}


def _damaged(stage: Stage) -> bool:
    """True (and said) when a finished model of the stage no longer matches its checkpoint.json record."""
    from babyllama.train.checkpoint import damaged_file

    for folder in stage.published:
        bad = damaged_file(folder)
        if bad is not None:
            print(f"[run] {folder / bad} does not match its checkpoint.json record (damaged): stage {stage.name} "
                  "will redo it", flush=True)
            return True
    return False


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        state = read_json(path)
    except ValueError:
        raise UserError(f"{path}: corrupted run state; delete it to start the run over") from None
    return state if isinstance(state, dict) else {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_json(path, state)


# -- evaluation of every model -------------------------------------------------------------------------


def evaluate_all(cfg: Config, model_fps: dict[str, str]) -> None:
    """Every evaluator the config switches on (evaluate/registry.py), for every model; results under <out_dir>/eval/.

    Each result file stores the fingerprint it was computed for, so an interrupted evaluation resumes
    with the next missing result rather than starting over.
    """
    from babyllama.evaluate.registry import jobs

    todo = jobs(cfg)
    for name, model_fp in model_fps.items():
        model_dir = cfg.model_dir(name)
        out = cfg.out / "eval" / name
        weights = model_dir / "model.safetensors"
        stamp = [weights.stat().st_size, weights.stat().st_mtime_ns] if weights.exists() else None
        for _, job in todo:
            path = out / job.file
            fp = stable_hash({"model": model_fp, "weights": stamp, **job.settings})
            if path.exists():
                try:
                    if read_json(path).get("_fingerprint") == fp:
                        continue
                except ValueError:
                    pass
            print(f"[run] evaluate {name}: {job.file.removesuffix('.json')}", flush=True)
            result = job.run(model_dir)
            result["_fingerprint"] = fp
            atomic_write_json(path, result)


def _report(cfg: Config) -> None:
    from babyllama.report import build_report

    build_report(cfg.out)
