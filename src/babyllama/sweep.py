"""`babyllama sweep`: one config, several seeds and ablations, and how sure each difference is.

Members. A member is one (setting, seed): the default setting is the config itself; ``sweep.grid``
adds every combination of its axes and ``sweep.teacher_subsets`` distils from fewer teachers. Each
seed sets the student's (and so the control's) ``train.seed``; the teachers keep the experiment's
seed unless ``sweep.teacher_seeds: per_seed``. The data split uses the experiment's seed, so every
member trains and is evaluated on the same prepared data, and differences pair up by seed.

Sharing. Every member is an ordinary run directory, ``<out_dir>/sweep/<member>/``, run by
``pipeline.run_pipeline`` with the same fingerprints as ``babyllama run``; a killed sweep resumes
member by member, stage by stage. What members have in common lives once, and the member links to it:

- the prepared data: ``<out_dir>/data``;
- the teachers: trained once per distinct teacher config, in ``<out_dir>`` itself when they are the
  config's own teachers (a finished ``babyllama run`` is reused as is), otherwise in
  ``<out_dir>/sweep/teachers/<hash>/``; their evaluation results are shared with them;
- the teacher-logit cache: ``<out_dir>/cache`` (its key folders keep different caches apart).

Shared parts are made under a file lock, so parallel members (``--jobs``, or ``--member I`` from a
scheduler's array) train each teacher and build each cache exactly once.
"""

from __future__ import annotations

import copy
import fcntl
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from babyllama import distributed
from babyllama.config import Config, _apply_override, _format_error, save_resolved
from babyllama.errors import UserError
from babyllama.io import atomic_write_json, read_json, stable_hash

SWEEP_DIR = "sweep"


@dataclass(frozen=True)
class SweepMember:
    index: int
    name: str  # folder under <out_dir>/sweep/
    seed: int
    label: str  # 'default' or 'distill.alpha=0.9, teachers=llama-teacher'
    point: dict[str, Any] = field(default_factory=dict)  # grid key -> value; 'teachers' -> a teacher subset


# -- the members -----------------------------------------------------------------------------------------


def sweep_dir(cfg: Config) -> Path:
    return cfg.out / SWEEP_DIR


def _paths(node: Any, parts: list[str], prefix: list[str], key: str) -> list[list[str]]:
    """Expand '*' (every entry of a list) in a dotted key into concrete override paths."""
    if not parts:
        return [prefix]
    head, rest = parts[0], parts[1:]
    if head == "*":
        if not isinstance(node, list):
            raise UserError(f"sweep.grid: {key!r}: '*' must stand for the entries of a list ({'.'.join(prefix)} is not one)")
        return [p for i, el in enumerate(node) for p in _paths(el, rest, [*prefix, str(i)], key)]
    child = None
    if isinstance(node, dict):
        child = node.get(head)
    elif isinstance(node, list):
        child = next((el for i, el in enumerate(node) if str(i) == head or (isinstance(el, dict) and el.get("name") == head)),
                     None)
    return _paths(child, rest, [*prefix, head], key)


def _validate(tree: dict[str, Any], what: str) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise UserError(_format_error(f"sweep: {what}", e, tree)) from None


def _with_point(base: Config, point: dict[str, Any]) -> dict[str, Any]:
    """The base config's tree with a grid point's values set (teacher subsets are applied later)."""
    tree = base.model_dump(mode="json")
    for key, value in point.items():
        if key == "teachers":
            continue
        for parts in _paths(tree, key.split("."), [], key):
            _apply_override(tree, parts, copy.deepcopy(value), f"sweep.grid.{key}={value}")
    return tree


def _label(point: dict[str, Any]) -> str:
    if not point:
        return "default"
    return ", ".join(f"{k}={'+'.join(v) if k == 'teachers' else json.dumps(v)}" for k, v in point.items())


def _slug(point: dict[str, Any]) -> str:
    if not point:
        return "default"
    text = "+".join(f"{k.replace('*', 'all')}={'+'.join(v) if k == 'teachers' else v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text)


def points(base: Config) -> list[dict[str, Any]]:
    """The default (the config itself) first, then every grid x teacher-subset combination that differs from it."""
    keys = list(base.sweep.grid)
    subsets: list[list[str] | None] = [None, *[list(s) for s in base.sweep.teacher_subsets]]
    if len(subsets) > 1 and sorted(t.name for t in base.teachers) in [sorted(s) for s in subsets[1:]]:
        subsets = [s for s in subsets if s is None or sorted(s) != sorted(t.name for t in base.teachers)]
    out: list[dict[str, Any]] = [{}]
    plain = base.model_dump(mode="json")
    seen = {stable_hash([plain, None])}
    for values in itertools.product(*base.sweep.grid.values()):
        for subset in subsets:
            point = {k: v for k, v in zip(keys, values, strict=True) if _with_point(base, {k: v}) != plain}
            point |= {"teachers": subset} if subset else {}
            tree = _with_point(base, point)
            _validate(tree, f"grid point {_label(point)}")
            h = stable_hash([tree, subset])
            if h not in seen:
                seen.add(h)
                out.append(point)
    return out


def sweep_members(base: Config, n_seeds: int) -> list[SweepMember]:
    """Every (setting, seed), settings outermost; seeds are the experiment's seed, +1, +2, ..."""
    if base.student is None or not base.teachers:
        raise UserError("sweep: the config needs a `student` and at least one teacher")
    seeds = [base.seed + i for i in range(n_seeds)]
    out = []
    for point in points(base):
        for seed in seeds:
            out.append(SweepMember(len(out), f"{_slug(point)}-s{seed}", seed, _label(point), point))
    return out


def _teacher_trees(base: Config, m: SweepMember) -> list[dict[str, Any]]:
    """The member's full teacher list (before any subset), each with its seed made explicit."""
    tree = _with_point(base, m.point)
    for t in tree["teachers"]:
        if base.sweep.teacher_seeds == "per_seed":
            t["train"]["seed"] = m.seed
        elif t["train"].get("seed") is None:
            t["train"]["seed"] = base.seed
    return tree["teachers"]


def teacher_home(base: Config, m: SweepMember) -> Config:
    """The run directory that trains this member's teachers: the config's own out_dir for its own teachers."""
    own = _teacher_trees(base, SweepMember(0, "", base.seed, "default"))
    mine = _teacher_trees(base, m)
    if mine == own:
        return base
    tree = base.model_dump(mode="json")
    tree["teachers"] = mine
    tree["out_dir"] = str(sweep_dir(base) / "teachers" / stable_hash(mine)[:12])
    return _validate(tree, f"teachers of {m.label}")


def member_config(base: Config, m: SweepMember) -> Config:
    """The member's own config: the point's values, its seed, its teachers, its out_dir."""
    tree = _with_point(base, m.point)
    tree["teachers"] = _teacher_trees(base, m)
    tree["student"]["train"]["seed"] = m.seed
    subset = m.point.get("teachers")
    if subset:
        keep = [i for i, t in enumerate(tree["teachers"]) if t["name"] in subset]
        tree["teachers"] = [tree["teachers"][i] for i in keep]
        if tree["distill"].get("weights"):
            tree["distill"]["weights"] = [tree["distill"]["weights"][i] for i in keep]
    tree["out_dir"] = str(sweep_dir(base) / m.name)
    return _validate(tree, f"member {m.name}")


def write_plan(base: Config, ms: list[SweepMember]) -> Path:
    path = sweep_dir(base) / "plan.json"
    atomic_write_json(path, {"out_dir": str(base.out), "members": [asdict(m) | {"out_dir": str(sweep_dir(base) / m.name)}
                                                                   for m in ms]})
    return path


# -- running a member ------------------------------------------------------------------------------------


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (rank 0 of each): shared parts are made by one member at a time."""
    if not distributed.is_main_process():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _link(link: Path, target: Path) -> None:
    """A relative symlink ``link`` -> ``target`` (replacing a link that points elsewhere)."""
    target.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    elif link.exists():
        if link.resolve() == target.resolve():
            return
        raise UserError(f"{link}: exists and is not the shared {target}; delete it and rerun the sweep")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def _state(cfg: Config) -> dict[str, Any]:
    from babyllama.pipeline import STATE_FILE

    path = cfg.out / STATE_FILE
    try:
        return read_json(path) if path.exists() else {}
    except ValueError:
        raise UserError(f"{path}: corrupted run state; delete it to start that run over") from None


def prepare_shared(base: Config, mcfg: Config, home: Config) -> None:
    """Data, teachers (trained, evaluated), the teacher cache, and the member's links to them."""
    from babyllama.pipeline import STATE_FILE, evaluate_all, run_pipeline

    teachers = [f"teacher:{t.name}" for t in home.trained_teachers]
    if home.out != base.out:
        run_pipeline(base, only=["prepare"])
        _link(home.data_dir, base.data_dir)
        if distributed.is_main_process():
            save_resolved(home)
    run_pipeline(home, only=["prepare", *teachers])
    main = distributed.is_main_process()
    if main:
        _link(mcfg.data_dir, base.data_dir)
        _link(mcfg.out / "cache", base.out / "cache")
        for t in mcfg.trained_teachers:
            _link(mcfg.model_dir(t.name), home.model_dir(t.name))
            _link(mcfg.checkpoint_dir(t.name), home.checkpoint_dir(t.name))
            _link(mcfg.out / "eval" / t.name, home.out / "eval" / t.name)
        home_state, state = _state(home), _state(mcfg)
        for stage in ["prepare", *(f"teacher:{t.name}" for t in mcfg.trained_teachers)]:
            if state.get(stage, {}).get("fingerprint") != home_state[stage]["fingerprint"]:
                state[stage] = home_state[stage]
        atomic_write_json(mcfg.out / STATE_FILE, state)
        save_resolved(mcfg)
        adopt_identical(base, mcfg)
    distributed.barrier()
    if mcfg.distill.cache.enabled:
        from babyllama.distill.run import build_teacher_cache

        build_teacher_cache(mcfg)
    if main:  # the teachers' results are shared too: evaluated once, here, not by every member
        home_state = _state(home)
        evaluate_all(mcfg, {t.name: home_state[f"teacher:{t.name}"]["fingerprint"] for t in mcfg.trained_teachers})


def adopt_identical(base: Config, mcfg: Config) -> None:
    """Link the student and the control of an identical finished run instead of training them again.

    Identical means the same stage fingerprint as `run` computes: the config's own run (the default
    setting at the experiment's seed is that run) or the default setting's member of the same seed (an
    ablation of the distillation leaves the control unchanged). A link that no longer matches is removed,
    so the member then trains its own model rather than writing through the link.
    """
    from babyllama.pipeline import STATE_FILE, plan

    assert mcfg.student is not None
    stages = {s.name: s for s in plan(mcfg)}
    seed = mcfg.student.train.seed
    default = SweepMember(0, f"{_slug({})}-s{seed}", seed if seed is not None else base.seed, "default")
    sources = [base, member_config(base, default)]
    state = _state(mcfg)
    for stage, name in (("distill", mcfg.student.name), ("control", mcfg.control_name)):
        if stage not in stages:
            continue
        fp = stages[stage].fingerprint()
        paths = [mcfg.model_dir(name), mcfg.checkpoint_dir(name), mcfg.out / "eval" / name]
        if any(p.exists() and not p.is_symlink() for p in paths):
            continue  # the member's own model (finished or resuming): run_pipeline decides
        source = next((src for src in sources if src.out != mcfg.out and _state(src).get(stage, {}).get("done")
                       and _state(src)[stage]["fingerprint"] == fp
                       and (src.model_dir(name) / "model.safetensors").exists()), None)
        if source is None:
            for p in paths:
                if p.is_symlink():
                    p.unlink()
            if state.get(stage, {}).get("fingerprint") == fp:
                state.pop(stage)
            continue
        for p, target in zip(paths, [source.model_dir(name), source.checkpoint_dir(name), source.out / "eval" / name],
                             strict=True):
            _link(p, target)
        if state.get(stage) != _state(source)[stage]:
            state[stage] = _state(source)[stage]
            print(f"[sweep] {mcfg.out.name}: {stage} is identical to the one in {source.out}: reused", flush=True)
    atomic_write_json(mcfg.out / STATE_FILE, state)


def run_member(base: Config, m: SweepMember, total: int) -> None:
    """Run one member to completion (or resume it): shared parts under the lock, then its own pipeline."""
    from babyllama.pipeline import run_pipeline

    mcfg, home = member_config(base, m), teacher_home(base, m)
    if distributed.is_main_process():
        print(f"[sweep] member {m.index + 1}/{total}: {m.name} ({m.label}, seed {m.seed})", flush=True)
    with _lock(sweep_dir(base) / ".lock"):
        prepare_shared(base, mcfg, home)
    run_pipeline(mcfg)


def run_parallel(base: Config, ms: list[SweepMember], jobs: int, command: list[str]) -> None:
    """Shared parts first (in this process), then ``jobs`` members at a time as `--member I` processes."""
    from concurrent.futures import ThreadPoolExecutor

    for m in ms:
        with _lock(sweep_dir(base) / ".lock"):
            prepare_shared(base, member_config(base, m), teacher_home(base, m))

    def one(m: SweepMember) -> int:
        log = sweep_dir(base) / m.name / "sweep.log"
        print(f"[sweep] member {m.index + 1}/{len(ms)}: {m.name} started (log: {log})", flush=True)
        with open(log, "a") as f:
            rc = subprocess.call([*command, "--member", str(m.index)], stdout=f, stderr=subprocess.STDOUT)
        print(f"[sweep] member {m.index + 1}/{len(ms)}: {m.name} {'done' if rc == 0 else f'FAILED (exit {rc}, see {log})'}",
              flush=True)
        return rc

    with ThreadPoolExecutor(jobs) as pool:
        failed = [m.name for m, rc in zip(ms, pool.map(one, ms), strict=True) if rc != 0]
    if failed:
        raise UserError(f"sweep: {len(failed)} member(s) failed: {', '.join(failed)} (their sweep.log says why)")


def cli_command(config: str, overrides: list[str], n_seeds: int) -> list[str]:
    """The command line that runs one member of this sweep in a fresh process."""
    sets = [a for o in overrides for a in ("--set", o)]
    return [sys.executable, "-m", "babyllama", "sweep", config, *sets, "--seeds", str(n_seeds)]
