"""The thread policy: decided before torch is imported, for every entry point, and overridable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from babyllama.errors import UserError
from babyllama.threads import cgroup_quota_cpus, decide
from fixtures.eval.tiny_models import make_model_dir

FIX = Path(__file__).parent / "fixtures" / "eval"
SRC = str(Path(__file__).resolve().parents[1] / "src")

# Runs `babyllama.cli.main(argv)` and records, at the moment something first imports torch, whether the
# policy had been decided and what the OpenMP variables were; then the thread count torch really uses.
PROBE = r"""
import importlib.abc, json, os, sys
from babyllama import threads
from babyllama.cli import main
seen = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "at_torch_import" not in seen:
            p = threads.current()
            seen["at_torch_import"] = {"decided": p and p.threads, "omp": os.environ.get("OMP_NUM_THREADS"),
                                       "wait": os.environ.get("OMP_WAIT_POLICY")}
        return None
sys.meta_path.insert(0, Watch())
rc = main(sys.argv[1:])
import torch
p = threads.current()
print(json.dumps({"rc": rc, **seen, "threads": p.threads, "source": p.source, "torch_threads": torch.get_num_threads()}))
"""


@pytest.fixture(scope="module")
def blimp_args(tmp_path_factory) -> list[str]:
    model = make_model_dir(tmp_path_factory.mktemp("threads") / "m", "llama")
    return ["evaluate", "blimp", "--model", str(model), "--data", str(FIX / "blimp_2024"), "--device", "cpu"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "BABYLLAMA_THREADS", "LOCAL_WORLD_SIZE", "MKL_NUM_THREADS")}
    return {**env, "PYTHONPATH": SRC + os.pathsep + env.get("PYTHONPATH", ""), **extra}


def _probe(args: list[str], **env: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=_env(**env), timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_policy_is_in_place_before_torch_loads_and_torch_uses_it(blimp_args) -> None:
    out, err = _probe([*blimp_args, "--threads", "1"])  # a command that loads a model and scores with torch
    assert out["rc"] == 0 and out["source"] == "--threads"
    assert out["at_torch_import"] == {"decided": 1, "omp": "1", "wait": "PASSIVE"}
    assert out["torch_threads"] == 1
    assert "babyllama: 1 CPU thread (--threads;" in err and "OMP_WAIT_POLICY=PASSIVE" in err


CONFIG = ["config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")]  # torch-free: cheap to start


def test_overrides_and_the_derived_default() -> None:
    out, _ = _probe(CONFIG, BABYLLAMA_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    assert (out["source"], out["torch_threads"], out["at_torch_import"]["wait"]) == ("BABYLLAMA_THREADS", 1, "ACTIVE")
    out, _ = _probe(CONFIG)
    assert out["source"] == "derived" and out["torch_threads"] == out["threads"] == decide(environ={}).threads
    many = os.cpu_count() + 1  # more than the cores: torch would cap it, and the decision says so
    out, _ = _probe([*CONFIG, "--threads", str(many)])
    assert out["torch_threads"] == out["threads"] == os.cpu_count() and "capped" in out["source"]


@pytest.mark.parametrize("entry", ["module", "script"])
def test_every_entry_point_logs_one_decision(entry: str, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("babyllama")
    if entry == "script" and not script.exists():
        pytest.skip("the babyllama console script is not installed beside this interpreter")
    cmd = [sys.executable, "-m", "babyllama"] if entry == "module" else [str(script)]
    done = subprocess.run([*cmd, "report", str(tmp_path), "--threads", "1"], capture_output=True, text=True,
                          env=_env(), timeout=900)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stderr  # the decision, then report's own error
    assert lines[0].startswith("babyllama: 1 CPU thread (--threads;") and "not a babyllama out_dir" in lines[1]


def test_bad_override_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "babyllama", "report", str(tmp_path)], capture_output=True, text=True,
                          env=_env(BABYLLAMA_THREADS="many"), timeout=900)
    assert done.returncode == 2 and done.stderr.strip() == (
        "babyllama: error: BABYLLAMA_THREADS='many': expected a whole number of threads >= 1")


def test_derivation_under_torchrun_and_quota(monkeypatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    # torchrun sets OMP_NUM_THREADS=1 itself: under it, the CPUs are shared among the node's processes instead
    torchrun = {"LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "1"}
    assert (decide(environ=torchrun, affinity=16, quota=None).threads, decide(environ=torchrun, affinity=16, quota=None).source) == (4, "derived")
    assert decide(environ=torchrun, affinity=16, quota=6.0).threads == 1
    assert decide(environ={"LOCAL_WORLD_SIZE": "8"}, affinity=4, quota=None).threads == 1
    assert decide(environ={}, affinity=8, quota=2.5).threads == 2
    assert decide(environ={"OMP_NUM_THREADS": "5"}, affinity=8, quota=None).threads == 5
    assert decide(environ={"BABYLLAMA_THREADS": "3"}, affinity=8, quota=None).threads == 3
    assert decide(2, environ={"BABYLLAMA_THREADS": "3", "OMP_NUM_THREADS": "4"}, affinity=8, quota=None).source == "--threads"
    with pytest.raises(UserError, match="BABYLLAMA_THREADS='0'"):
        decide(environ={"BABYLLAMA_THREADS": "0"}, affinity=8, quota=None)


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "job" / "cpu.max").write_text("250000 100000\n")  # a parent's quota binds its children
    (v2 / "job" / "step" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/job/step\n")
    assert cgroup_quota_cpus(v2, proc) == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n")
    assert cgroup_quota_cpus(v1, proc) == 1.5
    shutil.rmtree(v1 / "cpu,cpuacct" / "docker")
    assert cgroup_quota_cpus(v1, proc) is None
