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
- the teacher-logit cache: ``<out_dir>/cache`` (its key folders keep different caches apart; a sampled
  cache draws with the member's seed, so each seed has its own draws and the spread counts their noise).

Shared parts are made under a file lock, so parallel members (``--jobs``, or ``--member I`` from a
scheduler's array) train each teacher and build each cache exactly once; a member also holds the
out_dir locks of the shared folders it writes, so a `babyllama run` there meanwhile is refused.

The plan. ``plan.json`` fixes the members (index, name, seed, setting) and each member's config
fingerprint: ``--member I`` runs the plan's member I (refused when the config no longer gives it the
planned config) and ``--collect`` counts the planned members that finished under the current config with
results the registry's reader verifies. A student or control identical to a finished run's is adopted
as a copy (hard links), never a symlink, so a later run on the source cannot change a finished member.
"""

from __future__ import annotations

import copy
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from babyllama import distributed
from babyllama.config import Config, apply_override, save_resolved, validate_tree
from babyllama.errors import UserError
from babyllama.existing import check_sources
from babyllama.io import atomic_write_json, read_json, stable_hash
from babyllama.roles import PREPARE, Role, members
from babyllama.run_state import RunState

SWEEP_DIR = "sweep"
T = TypeVar("T")


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
    return validate_tree(tree, f"sweep: {what}")


def _with_point(base: Config, point: dict[str, Any]) -> dict[str, Any]:
    """The base config's tree with a grid point's values set (teacher subsets are applied later)."""
    tree = base.model_dump(mode="json")
    for key, value in point.items():
        if key == "teachers":
            continue
        dumped = ["from_" if part == "from" else part for part in key.split(".")]  # the dump's name of the alias
        for parts in _paths(tree, dumped, [], key):
            apply_override(tree, parts, copy.deepcopy(value), f"sweep.grid.{key}={value}")
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


def _check_member_tree(cfg: Config, point: dict[str, Any]) -> None:
    """A grid point must leave a member something to distil: a student and at least one teacher."""
    if cfg.student is None or not cfg.teachers:
        raise UserError(f"sweep.grid: the point {_label(point)} leaves no "
                        f"{'student' if cfg.student is None else 'teacher'}; a member needs a student and a teacher")


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
            _check_member_tree(_validate(tree, f"grid point {_label(point)}"), point)
            # the point's own teachers and their vocabularies, before anything is written
            check_sources(_validate(_keep_teachers(copy.deepcopy(tree), subset), f"grid point {_label(point)}"))
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
        if "train" not in t:  # an existing model (`from`): never trained here, it has no seed
            continue
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
    tree = _with_point(base, m.point)  # the point's distill settings too: they decide how its teachers are checked
    tree["teachers"] = mine
    tree["out_dir"] = str(sweep_dir(base) / "teachers" / stable_hash(mine)[:12])
    return _validate(tree, f"teachers of {m.label}")


def member_config(base: Config, m: SweepMember) -> Config:
    """The member's own config: the point's values, its seed, its teachers, its out_dir."""
    tree = _with_point(base, m.point)
    tree["teachers"] = _teacher_trees(base, m)
    tree["student"]["train"]["seed"] = m.seed
    draws = tree["distill"]["cache"]
    if draws.get("seed") is not None:  # a fixed draw seed moves with the member's, as the student's does
        draws["seed"] += m.seed - base.seed
    _keep_teachers(tree, m.point.get("teachers"))
    tree["out_dir"] = str(sweep_dir(base) / m.name)
    return _validate(tree, f"member {m.name}")


def _keep_teachers(tree: dict[str, Any], subset: list[str] | None) -> dict[str, Any]:
    """The tree with only the teachers of ``subset`` (and their weights), in place; all of them for None."""
    if subset:
        keep = [i for i, t in enumerate(tree["teachers"]) if t["name"] in subset]
        tree["teachers"] = [tree["teachers"][i] for i in keep]
        if tree["distill"].get("weights"):
            tree["distill"]["weights"] = [tree["distill"]["weights"][i] for i in keep]
    return tree


def member_fingerprint(base: Config, m: SweepMember) -> str:
    """A member's identity in the plan: its whole resolved config (point, seed, teachers, out_dir)."""
    return stable_hash(member_config(base, m).model_dump(mode="json"))


def write_plan(base: Config, ms: list[SweepMember]) -> Path:
    """plan.json: the truth about the sweep's members (index, name, seed, setting, config fingerprint);
    `--member I` and `--collect` read it rather than deriving members again from the command line."""
    path = sweep_dir(base) / "plan.json"
    atomic_write_json(path, {"out_dir": str(base.out), "members": [
        asdict(m) | {"out_dir": str(sweep_dir(base) / m.name), "fingerprint": member_fingerprint(base, m)} for m in ms]})
    return path


def read_plan(base: Config) -> list[tuple[SweepMember, str]] | None:
    """(member, config fingerprint) of each entry of plan.json, None when there is none; one line if damaged."""
    path = sweep_dir(base) / "plan.json"
    if not path.is_file():
        return None
    try:
        entries = read_json(path)["members"]
        return [(SweepMember(e["index"], e["name"], e["seed"], e["label"], e["point"]), e["fingerprint"]) for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: damaged plan ({type(e).__name__}: {e}); write it again with `babyllama sweep "
                        "CONFIG --plan`") from None


def planned_member(base: Config, index: int) -> SweepMember:
    """Member ``index`` of plan.json, refused when the config no longer gives that member the planned config."""
    plan = read_plan(base)
    assert plan is not None
    if not 0 <= index < len(plan):
        raise UserError(f"sweep --member {index}: this sweep has members 0..{len(plan) - 1} (see --plan, plan.json)")
    m, fingerprint = plan[index]
    if member_fingerprint(base, m) != fingerprint:
        raise UserError(f"sweep --member {index}: the config no longer gives member {m.name} the config planned for it "
                        f"in {sweep_dir(base) / 'plan.json'}; write the plan again (`--plan`) before running members")
    return m


def off_plan(base: Config, ms: list[SweepMember]) -> dict[str, str]:
    """{member name: why} for the planned members whose planned config is not the current config's."""
    plan = {m.name: fp for m, fp in read_plan(base) or []}
    return {m.name: "planned under another config (run the sweep again to redo it)"
            for m in ms if m.name in plan and plan[m.name] != member_fingerprint(base, m)}


# -- running a member ------------------------------------------------------------------------------------


#: Set by `sweep --jobs` for its members: the pid of the parent that holds the out_dir's lock for them.
PARENT_ENV = "BABYLLAMA_SWEEP_PARENT"


def shared_lock(base: Config) -> Any:
    """The sweep's lock on its shared parts (data, teachers, cache, plan): one member at a time makes them."""
    return _lock(sweep_dir(base) / ".lock")


@contextmanager
def _shared_out_dirs(base: Config, home: Config, *, lock_base: bool) -> Iterator[None]:
    """Hold the out_dir locks of the shared folders a member writes: the teachers' home when it is not the
    out_dir, and the out_dir itself unless the parent `sweep` holds it for this member. Taken while the
    sweep's own lock is held, so members never wait on each other here; a `babyllama run` on the same
    out_dir is refused in one line. No cleanup: other members write below these folders meanwhile."""
    from contextlib import ExitStack

    from babyllama.lock import out_dir_lock

    parent = os.environ.get(PARENT_ENV)
    with ExitStack() as held:
        if distributed.is_main_process():
            if lock_base and parent != str(os.getppid()):
                held.enter_context(out_dir_lock(base.out, "babyllama sweep --member (shared parts)", clean=False))
            if home.out != base.out:
                held.enter_context(out_dir_lock(home.out, "babyllama sweep (teachers)", clean=False))
        yield


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


def _teacher_stages(cfg: Config) -> dict[str, str]:
    """{teacher name: the `run` stage that trains it} (external teachers have none)."""
    return {m.name: m.stage for m in members(cfg) if m.role is Role.TEACHER and m.stage is not None}


def _adopt_copy(dest: Path, src: Path) -> None:
    """``dest`` becomes a copy of the folder ``src`` (hard-linked files where possible), atomically."""
    import shutil

    from babyllama.io import atomic_path

    if dest.is_symlink():
        dest.unlink()
    if not src.is_dir():
        return

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with atomic_path(dest) as tmp:
        shutil.copytree(src, tmp, symlinks=False, copy_function=link_or_copy)


def prepare_shared(base: Config, mcfg: Config, home: Config) -> None:
    """Data, teachers (trained, evaluated), the teacher cache, and the member's links to them."""
    from babyllama.pipeline import evaluate_all, run_pipeline

    teachers = _teacher_stages(home)
    if home.out != base.out:
        run_pipeline(base, only=[PREPARE])
        _link(home.data_dir, base.data_dir)
        if distributed.is_main_process():
            save_resolved(home)
    run_pipeline(home, only=[PREPARE, *teachers.values()])
    main = distributed.is_main_process()
    if main:
        _link(mcfg.data_dir, base.data_dir)
        _link(mcfg.out / "cache", base.out / "cache")
        for t in mcfg.trained_teachers:
            _link(mcfg.model_dir(t.name), home.model_dir(t.name))
            _link(mcfg.checkpoint_dir(t.name), home.checkpoint_dir(t.name))
        for t in mcfg.teachers:  # existing teachers are evaluated once too, in their home
            _link(mcfg.out / "eval" / t.name, home.out / "eval" / t.name)
        for stage in [PREPARE, *_teacher_stages(mcfg).values()]:
            RunState(mcfg.out).adopt(stage, RunState(home.out))
        save_resolved(mcfg)
        adopt_identical(base, mcfg)
    distributed.barrier()
    if mcfg.distill.cache.enabled:
        from babyllama.distill.run import build_teacher_cache

        build_teacher_cache(mcfg, _cache_companions(base, mcfg, home))
    if main:  # the teachers' results are shared too: evaluated once, here, not by every member
        evaluate_all(mcfg, [t.name for t in mcfg.teachers])


def _cache_companions(base: Config, mcfg: Config, home: Config) -> list[Config]:
    """The planned members that distil from this member's teachers (same teacher home): their teacher caches,
    which differ only in the draws' seed, are built in this member's pass of the teachers."""
    return [c for m, _ in read_plan(base) or [] if teacher_home(base, m).out == home.out
            for c in [member_config(base, m)] if c.out != mcfg.out]


def adopt_identical(base: Config, mcfg: Config) -> None:
    """Copy the student and the control of an identical finished run instead of training them again.

    Identical means the same stage fingerprint as `run` computes: the config's own run (the default
    setting at the experiment's seed is that run) or the default setting's member of the same seed (an
    ablation of the distillation leaves the control unchanged). The copy is the member's own (hard links
    where the file system allows: every writer replaces files by renaming, never in place), so a later
    run on the source cannot change a finished member; links left by older versions are replaced by copies
    or, when they no longer match, removed, so the member trains its own model.
    """
    from babyllama.pipeline import plan

    assert mcfg.student is not None
    stages = {s.name: s for s in plan(mcfg)}
    state = RunState(mcfg.out)
    seed = mcfg.student.train.seed
    default = SweepMember(0, f"{_slug({})}-s{seed}", seed if seed is not None else base.seed, "default")
    sources = [base, member_config(base, default)]
    for m in members(mcfg):
        stage, name = m.stage, m.name
        if m.role not in (Role.STUDENT, Role.CONTROL) or stage not in stages:
            continue
        fp = stages[stage].fingerprint()
        paths = [mcfg.model_dir(name), mcfg.checkpoint_dir(name), mcfg.out / "eval" / name]
        if any(p.exists() and not p.is_symlink() for p in paths):
            continue  # the member's own model (finished or resuming): run_pipeline decides
        source = next((src for src in sources if src.out != mcfg.out and RunState(src.out).finished_with(stage) == fp
                       and (src.model_dir(name) / "model.safetensors").exists()), None)
        if source is None:
            for p in paths:
                if p.is_symlink():
                    p.unlink()
            if state.record(stage).get("fingerprint") == fp:
                state.forget(stage)
            continue
        for p, target in zip(paths, [source.model_dir(name), source.checkpoint_dir(name), source.out / "eval" / name],
                             strict=True):
            _adopt_copy(p, target)
        if state.adopt(stage, RunState(source.out)):
            print(f"[sweep] {mcfg.out.name}: {stage} is identical to the one in {source.out}: reused", flush=True)


def run_member(base: Config, m: SweepMember, total: int, *, lock_shared: bool = False) -> None:
    """Run one member to completion (or resume it): shared parts under the locks, then its own pipeline.
    ``lock_shared``: also take the out_dir's own lock for the shared parts (a `--member` process)."""
    from babyllama.pipeline import run_pipeline

    mcfg, home = member_config(base, m), teacher_home(base, m)
    if distributed.is_main_process():
        print(f"[sweep] member {m.index + 1}/{total}: {m.name} ({m.label}, seed {m.seed})", flush=True)
    with shared_lock(base), _shared_out_dirs(base, home, lock_base=lock_shared):
        prepare_shared(base, mcfg, home)
    run_pipeline(mcfg)


def run_parallel(base: Config, ms: list[SweepMember], jobs: int, command: list[str]) -> None:
    """Shared parts first (in this process), then ``jobs`` members at a time as `--member I` processes,
    which stop with this one (ChildProcesses)."""
    for m in ms:
        home = teacher_home(base, m)
        with shared_lock(base), _shared_out_dirs(base, home, lock_base=False):
            prepare_shared(base, member_config(base, m), home)
    children = ChildProcesses()

    def one(m: SweepMember) -> int:
        log = sweep_dir(base) / m.name / "sweep.log"
        print(f"[sweep] member {m.index + 1}/{len(ms)}: {m.name} started (log: {log})", flush=True)
        with open(log, "a") as f:
            rc = children.call([*command, "--member", str(m.index)], stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, PARENT_ENV: str(os.getpid())})
        print(f"[sweep] member {m.index + 1}/{len(ms)}: {m.name} {'done' if rc == 0 else f'FAILED (exit {rc}, see {log})'}",
              flush=True)
        return rc

    failed = [m.name for m, rc in zip(ms, children.map(one, ms, jobs), strict=True) if rc != 0]
    if failed:
        raise UserError(f"sweep: {len(failed)} member(s) failed: {', '.join(failed)} (their sweep.log says why)")


class ChildProcesses:
    """Member processes that stop with their parent: a SIGTERM to the parent (a scheduler's cancel, a
    `kill`) is passed on to every child still running, and the parent then stops as if interrupted
    (finished members are kept; the sweep resumes)."""

    def __init__(self) -> None:
        self.running: set[subprocess.Popen] = set()
        self.stopping: list[int] = []

    def call(self, argv: list[str], **popen: Any) -> int:
        """Run one child to its end (returns at once, as terminated, once the parent is stopping)."""
        if self.stopping:
            return -signal.SIGTERM
        proc = subprocess.Popen(argv, **popen)
        self.running.add(proc)
        if self.stopping:  # the signal came while it started
            proc.terminate()
        try:
            return proc.wait()
        finally:
            self.running.discard(proc)

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping.append(signum)
        for proc in list(self.running):
            proc.terminate()

    def map(self, fn: Callable[[T], int], items: Iterable[T], jobs: int) -> list[int]:
        """``fn`` over ``items``, ``jobs`` at a time, with SIGTERM passed on to the children meanwhile."""
        from concurrent.futures import ThreadPoolExecutor

        previous = signal.signal(signal.SIGTERM, self._stop)
        try:
            with ThreadPoolExecutor(jobs) as pool:
                codes = list(pool.map(fn, items))
        finally:
            signal.signal(signal.SIGTERM, previous)
        if self.stopping:
            raise KeyboardInterrupt  # the CLI's "interrupted" (exit 130)
        return codes


def cli_command(config: str, overrides: list[str], n_seeds: int) -> list[str]:
    """The command line that runs one member of this sweep in a fresh process."""
    sets = [a for o in overrides for a in ("--set", o)]
    return [sys.executable, "-m", "babyllama", "sweep", config, *sets, "--seeds", str(n_seeds)]
