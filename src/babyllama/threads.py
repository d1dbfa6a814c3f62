"""How many CPU threads babyllama uses: decided once per process, before torch is imported.

Why: PyTorch's OpenMP workers busy-wait at the end of every parallel region. On a machine that is also
running something else (a shared server, a CI runner, a laptop) the cores they wait for are taken, and one
other busy process made training 15-20x slower instead of 2x. So every entry point (the `babyllama`
script, `python -m babyllama`, each torchrun rank) decides here, before the first `import torch`:

* intra-op threads = the CPUs this process may use (affinity mask, capped by a cgroup v2/v1 CPU quota),
  divided by the processes torchrun started on this node (LOCAL_WORLD_SIZE), at least 1;
* OMP_WAIT_POLICY=PASSIVE (idle workers sleep instead of spinning) unless the user set a policy.

Overrides, strongest first: ``--threads N`` on any command, ``BABYLLAMA_THREADS=N``, and outside
torchrun ``OMP_NUM_THREADS`` (torchrun sets that to 1 for every multi-process launch on its own, so
under torchrun it is not taken as the user's choice); never more than the machine's cores, where torch
caps the count itself. The OpenMP runtime reads both variables when torch
loads it, which is why this module must not import torch and must run first.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from babyllama.errors import UserError

ENV_VAR = "BABYLLAMA_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadPolicy:
    """The decision and what it was based on (recorded in training summaries and the report)."""

    threads: int
    source: str  # "--threads", "BABYLLAMA_THREADS", "OMP_NUM_THREADS", "derived" (+ ", capped ..."), "torch already loaded"
    wait_policy: str  # OMP_WAIT_POLICY as the OpenMP runtime sees it ("default" when unset)
    wait_source: str  # "babyllama" (we set PASSIVE), "user", or "torch already loaded"
    affinity_cpus: int
    quota_cpus: float | None
    local_world_size: int

    def line(self) -> str:
        """One log line: the decision and why."""
        quota = f"cgroup quota {self.quota_cpus:g} CPUs" if self.quota_cpus else "no cgroup CPU quota"
        per = f", {self.local_world_size} processes on this node" if self.local_world_size > 1 else ""
        return (f"babyllama: {self.threads} CPU thread{'s' * (self.threads != 1)} ({self.source}; "
                f"{self.affinity_cpus} CPUs in the affinity mask, {quota}{per}), "
                f"OMP_WAIT_POLICY={self.wait_policy} ({'babyllama default' if self.wait_source == 'babyllama' else self.wait_source})")

    def as_dict(self) -> dict:
        return asdict(self)


_current: ThreadPolicy | None = None


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; os.cpu_count where the OS has no masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """controller -> this process's cgroup path ("" is the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    return paths


def _ancestors(base: Path, rel: str) -> list[Path]:
    """``base/rel`` and every folder above it up to ``base``: a quota on any of them applies."""
    here = base / rel.lstrip("/")
    out = [here, *here.parents]
    return [p for p in out if p == base or base in p.parents]


def _read_quota(folder: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota, _, period = (folder / "cpu.max").read_text().partition(" ")
            return None if quota.strip() == "max" else int(quota) / int(period)
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        return None if quota_us <= 0 else quota_us / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def cgroup_quota_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota (in CPUs) of this process's cgroup and its parents, v2 or v1; None if unlimited."""
    paths = _cgroup_paths(proc_cgroup)
    candidates: list[tuple[Path, bool]] = []
    if "" in paths and (root / "cgroup.controllers").exists():
        candidates += [(p, True) for p in _ancestors(root, paths[""])]
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if "cpu" in paths and (root / mount).is_dir():
            candidates += [(p, False) for p in _ancestors(root / mount, paths["cpu"])]
            candidates.append((root / mount, False))  # a container sees its own cgroup at the mount root
            break
    quotas = [q for q in (_read_quota(p, v2) for p, v2 in candidates) if q]
    return min(quotas) if quotas else None


def _positive_int(value: str, where: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{where}={value!r}: expected a whole number of threads >= 1")
    return n


def decide(cli_threads: int | None = None, environ: dict[str, str] | None = None,
           affinity: int | None = None, quota: float | None | bool = False) -> ThreadPolicy:
    """The policy for this process from the flag, the environment and the machine (no side effects)."""
    env = os.environ if environ is None else environ
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_quota_cpus() if quota is False else quota
    local = _positive_int(env["LOCAL_WORLD_SIZE"], "LOCAL_WORLD_SIZE") if env.get("LOCAL_WORLD_SIZE") else 1
    under_torchrun = "LOCAL_WORLD_SIZE" in env
    if cli_threads is not None:
        threads, source = _positive_int(str(cli_threads), "--threads"), "--threads"
    elif env.get(ENV_VAR):
        threads, source = _positive_int(env[ENV_VAR], ENV_VAR), ENV_VAR
    elif env.get("OMP_NUM_THREADS") and not under_torchrun:
        threads, source = _positive_int(env["OMP_NUM_THREADS"].split(",")[0], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    else:
        usable = min(affinity, max(1, math.floor(quota))) if quota else affinity
        threads, source = max(1, usable // local), "derived"
    cores = os.cpu_count() or threads
    if threads > cores:  # torch would cap OMP_NUM_THREADS there itself; say so rather than log a wrong figure
        threads, source = cores, f"{source}, capped at the {cores} cores"
    user_wait = env.get("OMP_WAIT_POLICY")
    return ThreadPolicy(threads=threads, source=source, wait_policy=user_wait or "PASSIVE",
                        wait_source="user" if user_wait else "babyllama", affinity_cpus=affinity,
                        quota_cpus=quota or None, local_world_size=local)


def apply(cli_threads: int | None = None, log: bool = True) -> ThreadPolicy:
    """Decide and apply the policy for this process; call once, before anything imports torch.

    If torch is already loaded (babyllama used as a library, or the tests calling ``cli.main``), the
    OpenMP runtime has read its settings: the caller's thread count stands unless an override asks for
    another, and nothing is logged.
    """
    global _current
    policy = decide(cli_threads)
    if "torch" in sys.modules:
        import torch

        explicit = policy.source.startswith(("--threads", ENV_VAR))
        if explicit:
            torch.set_num_threads(policy.threads)
        policy = ThreadPolicy(**{**policy.as_dict(), "threads": torch.get_num_threads(),
                                 "source": policy.source if explicit else "torch already loaded",
                                 "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                                 "wait_source": "user" if "OMP_WAIT_POLICY" in os.environ else "torch already loaded"})
    else:
        os.environ["OMP_NUM_THREADS"] = str(policy.threads)
        os.environ.setdefault("OMP_WAIT_POLICY", policy.wait_policy)
        if log and os.environ.get("RANK", "0") == "0":
            print(policy.line(), file=sys.stderr, flush=True)
    _current = policy
    return policy


def current() -> ThreadPolicy | None:
    """The policy this process applied, or None if no entry point decided one."""
    return _current


def describe() -> dict:
    """What the run's environment table records: the decision, and the thread count torch really uses."""
    out = _current.as_dict() if _current else {"source": "not decided by babyllama"}
    if "torch" in sys.modules:
        out["torch_threads"] = sys.modules["torch"].get_num_threads()
    return out
