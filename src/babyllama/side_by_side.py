"""The teachers of one run trained side by side, each in its own process with a share of the CPU threads.

Why: on a CPU the demo's models are small (128 wide, 16 x 128 tokens a step), and a step of such a model
is many small operations. With babyllama's OMP_WAIT_POLICY=PASSIVE (babyllama.threads: idle OpenMP
threads sleep, so a shared machine is not stalled by spinning) every parallel operation first wakes the
other threads, which costs about as much as a small operation itself; one thread per process has no
such hand-off. So two teachers trained at once with one thread each can finish sooner than the same two
one after the other with two threads each (README, "Benchmarks"). ``side_by_side`` (config.py) says when
`babyllama run` does it: 'auto' on the CPU outside torchrun when this process has at least 2 threads;
GPUs and DDP runs train one stage at a time.

Each stage runs as `babyllama train <config> --model NAME --threads N`, the very command a user would type,
on a copy of the run's resolved config in its out_dir (the stage identity is the same on both sides; a
killed run leaves that one small file for the next run to overwrite, not a folder in /tmp). The parent holds
the out_dir lock; a child knows it is one (``PARENT_ENV`` names the parent's pid), so it neither takes
the lock nor rewrites config.yaml, and it dies with its parent, so a killed run leaves no orphan
training a model the next run resumes. Children's output is relayed line by line (their progress bars
write whole lines, as into a log); a failed child's one-line error is reported once, as the run's
error with the child's exit status, after the other children are stopped (each resumes from its last
checkpoint on the next run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from babyllama.errors import ERROR_PREFIX, UserError

#: Set for a stage's child process: the pid of the `babyllama run` that started it.
PARENT_ENV = "BABYLLAMA_RUN_PARENT"
#: The children's copy of the run's config, in its out_dir (config.yaml there is the user's to read and keep).
CONFIG_COPY = ".side_by_side.yaml"
#: Seconds between a child's progress lines (a bar in a log writes one a minute; relayed, more often).
PROGRESS_INTERVAL_S = "15"


class StageFailed(UserError):
    """A side-by-side stage failed: its one-line message and the exit status its process gave."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_parent: int | None = None  # in a stage's child: the pid of its `babyllama run`


def is_child() -> bool:
    """True in a stage's process started by `babyllama run` (after ``adopt``)."""
    return _parent is not None


def adopt() -> None:
    """At a command's start: when a `babyllama run` started this process for one of its stages (``PARENT_ENV``
    names our parent), remember it and end when it ends, however it ends (a SIGKILL included). The variable
    is removed, so nothing this process starts takes it for its own. Only the run's own children are given it:
    when the pid it names is no longer our parent, the run ended (was killed) while this process started, and
    the stage ends at once rather than train on alone, unlocked, into a folder the next run resumes."""
    global _parent
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    if parent != str(os.getppid()):
        os._exit(1)  # nobody reads our status or output: the run that wanted this stage is gone
    _parent = int(parent)
    if not _kernel_kills_us_with_parent():  # elsewhere than Linux: poll for the parent
        def watch() -> None:
            while os.getppid() == _parent:
                time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True, name="babyllama-parent-watch").start()
    if os.getppid() != _parent:  # it ended before the kernel was asked
        os._exit(1)


def _kernel_kills_us_with_parent() -> bool:
    """Linux: ask the kernel to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def decide(setting: bool | str, cpu_threads: int, stages: int, *, on_cpu: bool, distributed: bool) -> int:
    """How many of ``stages`` independent stages run at once (1: one after the other) under ``side_by_side``:
    'auto' on the CPU with at least 2 threads, ``true`` on the CPU even with one; never on a GPU or under
    torchrun (a GPU's kernels or the DDP ranks already use the hardware)."""
    if stages < 2 or distributed or not on_cpu or setting is False or (setting == "auto" and cpu_threads < 2):
        return 1
    return min(stages, max(2, cpu_threads))


@dataclass
class Job:
    """One stage to run in a child: its name, its command-line verb and arguments, and what to call when done."""

    name: str
    argv: list[str]
    done: Callable[[float], None]  # called with the stage's seconds once its process succeeded
    proc: subprocess.Popen | None = None
    started: float = 0.0
    error: str | None = None
    relay: threading.Thread | None = field(default=None, repr=False)


def stage_argv(config_file: Path, model: str, threads: int) -> list[str]:
    """The command of one teacher's child: what a user would type to train it alone, on the run's config."""
    return [sys.executable, "-m", "babyllama", "train", str(config_file), "--model", model, "--threads", str(threads)]


@contextlib.contextmanager
def config_copy(out_dir: Path, yaml_text: str) -> Iterator[Path]:
    """The run's resolved config in a file the children read, removed afterwards. In the out_dir, which the
    run holds locked (one run at a time writes it): a temporary folder elsewhere outlived every killed run."""
    from babyllama.io import atomic_write_text

    path = Path(out_dir) / CONFIG_COPY
    atomic_write_text(path, yaml_text)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def run_jobs(jobs: list[Job], at_once: int) -> None:
    """Run ``jobs``, ``at_once`` at a time, each in its own process; StageFailed (the others stopped) when one fails."""
    from babyllama.progress import INTERVAL_ENV

    env = {**os.environ, PARENT_ENV: str(os.getpid()), INTERVAL_ENV: PROGRESS_INTERVAL_S,
           "PYTHONUNBUFFERED": "1"}
    env.pop("BABYLLAMA_THREADS", None)  # each child's --threads is its share
    pending, running = list(jobs), []
    try:
        while pending or running:
            while pending and len(running) < at_once:
                running.append(_start(pending.pop(0), env))
            finished = _wait_any(running)
            running.remove(finished)
            code = finished.proc.returncode if finished.proc else 1
            if code != 0:
                pending.clear()
                _stop(running)
                raise _failure(finished, code, [j.name for j in running])
            finished.done(time.perf_counter() - finished.started)
    except BaseException:
        _stop(running)  # an interrupt (Ctrl-C, SIGTERM) or a failure: no child outlives the run
        raise


def _start(job: Job, env: dict[str, str]) -> Job:
    job.started = time.perf_counter()
    job.proc = subprocess.Popen(job.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1)
    job.relay = threading.Thread(target=_relay, args=(job,), daemon=True, name=f"babyllama-relay-{job.name}")
    job.relay.start()
    return job


def _relay(job: Job) -> None:
    """Copy the child's lines to our console as they come, keeping its one-line error for the run's own."""
    assert job.proc is not None and job.proc.stdout is not None
    for line in job.proc.stdout:
        if line.startswith(ERROR_PREFIX):
            job.error = line[len(ERROR_PREFIX):].strip()
            continue
        stream = sys.stdout if line.startswith("[") else sys.stderr  # our own [run] lines on stdout, bars on stderr
        stream.write(line)
        stream.flush()


def _wait_any(running: list[Job]) -> Job:
    """The first of ``running`` whose process has ended (and whose output has been relayed)."""
    while True:
        for job in running:
            if job.proc is not None and job.proc.poll() is not None:
                if job.relay is not None:
                    job.relay.join()
                return job
        time.sleep(0.1)


def _stop(running: list[Job]) -> None:
    """Terminate the children still running and wait for them (their checkpoints are written atomically)."""
    for job in running:
        if job.proc is not None and job.proc.poll() is None:
            job.proc.terminate()
    for job in running:
        if job.proc is not None:
            try:
                job.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
        if job.relay is not None:
            job.relay.join(timeout=5)


def _failure(job: Job, code: int, stopped: list[str]) -> StageFailed:
    why = job.error or (f"killed by signal {-code}" if code < 0 else f"exited with status {code} (its output is above)")
    also = (f"; stopped {', '.join(stopped)}, which resume{'s' * (len(stopped) == 1)} from the last checkpoint on the "
            "next run") if stopped else ""
    return StageFailed(f"{job.name}: {why}{also}", code if code > 0 else 1)
