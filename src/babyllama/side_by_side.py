"""The teachers of one run trained side by side, each in its own process with a share of the CPU threads.

Why: on a CPU the demo's models are small (128 wide, 16 x 128 tokens a step), and a step of such a model
is many small operations. With babyllama's OMP_WAIT_POLICY=PASSIVE (babyllama.threads: idle OpenMP
threads sleep, so a shared machine is not stalled by spinning) every parallel operation first wakes the
other threads, which costs about as much as a small operation itself; one thread per process has no
such hand-off. So two teachers trained at once with one thread each can finish sooner than the same two
one after the other with two threads each (README, "Benchmarks"). ``side_by_side`` (config.py) says when
`babyllama run` does it: 'auto' on the CPU outside torchrun when this process has at least 2 threads;
GPUs and DDP runs train one stage at a time.

Each stage runs `babyllama train <config> --model NAME --threads N`, the very command a user would type
(``ENTRY``, the function the `babyllama` script calls, given those arguments), on a copy of the run's
resolved config in its out_dir (the stage identity is the same on both sides), in a process forked from a fork server
(multiprocessing's 'forkserver'). Why: a new Python process imports torch and transformers' model code
(about 4 s on 2 cores) before its first step; the server imports them once (``PRELOAD``), from when the run
starts (``warm_up``), so that import overlaps the data preparation, and each stage's process is a fork of
it, ready at once; it ends when it has no more stage to give (``shut_down``). The server has only imported
modules, never run an operation (no OpenMP pool, no tokenizer threads), so forking it is safe. The parent
holds the out_dir lock; a stage's process knows it is one (``is_child``), so it neither takes the lock nor
rewrites config.yaml, and it dies with its run, so a killed run leaves no orphan training a model the next
run resumes. Each stage's output is relayed line by line (their progress bars write whole lines, as into a
log); a failed stage's one-line error is reported once, as the run's error with its process's exit status,
after the other stages are stopped (each resumes from its last checkpoint on the next run).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, TextIO

from babyllama.errors import ERROR_PREFIX, UserError
from babyllama.fast_exit import exit_now

#: The command a stage's process runs, named as the `babyllama` script names it: like the command line it
#: replaces (`python -m babyllama train ...`), the run calls the top of the package without importing it.
ENTRY = "babyllama.cli:main"
#: Imported once in the fork server, before the first stage: what `babyllama train` needs before its first
#: step (torch, transformers' model classes, the training loop).
#: The last, babyllama.fork_server_exit, lets the server end at once when its run has ended.
PRELOAD = ["babyllama.cli", "babyllama.training", "babyllama.train.loop", "babyllama.data.tokenizer",
           "babyllama.evaluate.registry", "babyllama.lock", "babyllama.fork_server_exit"]
#: The children's copy of the run's config, in its out_dir (config.yaml there is the user's to read and keep).
CONFIG_COPY = ".side_by_side.yaml"
#: Seconds between a child's progress lines (a bar in a log writes one a minute; relayed, more often).
PROGRESS_INTERVAL_S = "15"
#: Whether this platform can fork from a server (Linux, macOS); elsewhere the stages run one after the other.
FORKSERVER = "forkserver" in multiprocessing.get_all_start_methods()


class StageFailed(UserError):
    """A side-by-side stage failed: its one-line message and the exit status its process gave."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_parent: int | None = None  # in a stage's process: the pid of its `babyllama run`


def is_child() -> bool:
    """True in a stage's process started by `babyllama run`."""
    return _parent is not None


def warm_up() -> None:
    """Start the fork server now, so that its imports overlap what the run does before its teachers."""
    if FORKSERVER:
        multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()


def shut_down() -> None:
    """End the fork server (its imports hold memory the later stages can use); a no-op where none runs.
    Only once every stage's process has ended: each holds the server's lifeline too."""
    server = getattr(forkserver, "_forkserver", None)  # CPython's own state (3.8 to 3.13), read defensively
    pid, stop = getattr(server, "_forkserver_pid", None), getattr(server, "_stop", None)
    if pid is None or stop is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)  # at once, even while it is still importing
    stop()  # reap it, close its lifeline, remove its socket


def decide(setting: bool | str, cpu_threads: int, stages: int, *, on_cpu: bool, distributed: bool) -> int:
    """How many of ``stages`` independent stages run at once (1: one after the other) under ``side_by_side``:
    'auto' on the CPU with at least 2 threads, ``true`` on the CPU even with one; never on a GPU or under
    torchrun (a GPU's kernels or the DDP ranks already use the hardware), nor without a fork server."""
    if (stages < 2 or distributed or not on_cpu or not FORKSERVER or setting is False
            or (setting == "auto" and cpu_threads < 2)):
        return 1
    return min(stages, max(2, cpu_threads))


@dataclass
class Job:
    """One stage to run in a child: its name, its command-line arguments, and what to call when done."""

    name: str
    argv: list[str]
    done: Callable[[float], None]  # called with the stage's seconds once its process succeeded
    proc: Any = None  # its multiprocessing.Process once started
    started: float = 0.0
    error: str | None = None
    relay: threading.Thread | None = field(default=None, repr=False)


def stage_argv(config_file: Path, model: str, threads: int) -> list[str]:
    """The arguments of one teacher's command: what a user would type to train it alone, on the run's config."""
    return ["train", str(config_file), "--model", model, "--threads", str(threads)]


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

    env = {**os.environ, INTERVAL_ENV: PROGRESS_INTERVAL_S}
    env.pop("BABYLLAMA_THREADS", None)  # each child's --threads is its share
    pending, running = list(jobs), []
    try:
        while pending or running:
            asked = time.perf_counter()  # a stage's clock: from when the run wants it, waiting for the server too
            while pending and len(running) < at_once:
                running.append(_start(pending.pop(0), env, asked))
            finished = _wait_any(running)
            running.remove(finished)
            code = finished.proc.exitcode if finished.proc.exitcode is not None else 1
            if code != 0:
                pending.clear()
                _stop(running)
                raise _failure(finished, code, [j.name for j in running])
            finished.done(time.perf_counter() - finished.started)
    except BaseException:
        _stop(running)  # an interrupt (Ctrl-C, SIGTERM) or a failure: no child outlives the run
        raise
    finally:
        shut_down()


def _start(job: Job, env: dict[str, str], asked: float) -> Job:
    """Fork the job's process from the server (waiting for the server's imports, if still under way)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    read, write = ctx.Pipe(duplex=False)
    job.proc = ctx.Process(target=_stage_process, args=(job.argv, env, write), name=f"babyllama {job.name}")
    job.started = asked
    job.proc.start()
    write.close()  # the child holds the only write end: its output ends when it does
    lines = open(os.dup(read.fileno()), encoding=None, errors="replace")  # text, as subprocess reads a pipe
    read.close()
    job.relay = threading.Thread(target=_relay, args=(job, lines), daemon=True, name=f"babyllama-relay-{job.name}")
    job.relay.start()
    return job


def _stage_process(argv: list[str], env: dict[str, str], out: Connection) -> None:
    """In a stage's process (a fork of the server): its output into the run's pipe, the run's environment,
    death with the run, then the command, ending with its exit status."""
    global _parent
    for fd in (1, 2):
        os.dup2(out.fileno(), fd)
    out.close()
    sys.stdout, sys.stderr = _line_stream(1), _line_stream(2)
    os.environ.clear()
    os.environ.update(env)
    parent = multiprocessing.parent_process()
    _parent = parent.pid if parent is not None else os.getppid()
    if parent is not None:
        threading.Thread(target=_die_with, args=(parent,), daemon=True, name="babyllama-parent-watch").start()
    module, _, function = ENTRY.partition(":")
    signal.signal(signal.SIGTERM, _unwind)
    try:
        code = getattr(importlib.import_module(module), function)(argv)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command is over: a stop now just ends the process
    except _Stopped:  # every write in progress has removed its temporary on the way out (io.atomic_path)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = 128 + signal.SIGTERM  # the status of a stopped process: the run reports the stage that failed
    exit_now(code)


class _Stopped(BaseException):
    """The run stopped this stage (another one failed, or the run itself was interrupted). A BaseException, so
    that no ``except Exception`` in the command takes it for a failure of its own."""


def _unwind(signum: int, frame: Any) -> None:
    """SIGTERM in a stage's process: unwind instead of vanishing mid-write, so a checkpoint being written leaves
    no temporary folder behind; the checkpoint before it is the one the next run resumes."""
    raise _Stopped


def _line_stream(fd: int) -> TextIO:
    """A text stream on ``fd`` that passes each write straight on (the run relays whole lines as they come)."""
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=None, errors="backslashreplace",
                            line_buffering=True, write_through=True)


def _die_with(parent: Any) -> None:
    """End this process the moment its run ends, however it ends (a SIGKILL included): its lifeline closes."""
    parent.join()
    os.kill(os.getpid(), signal.SIGKILL)


def _relay(job: Job, lines: TextIO) -> None:
    """Copy the child's lines to our console as they come, keeping its one-line error for the run's own."""
    with lines:
        for line in lines:
            if line.startswith(ERROR_PREFIX):
                job.error = line[len(ERROR_PREFIX):].strip()
                continue
            stream = sys.stdout if line.startswith("[") else sys.stderr  # our own [run] lines on stdout, bars on stderr
            stream.write(line)
            stream.flush()


def _wait_any(running: list[Job]) -> Job:
    """The first of ``running`` whose process has ended (and whose output has been relayed)."""
    wait([job.proc.sentinel for job in running])
    job = next(j for j in running if j.proc.exitcode is not None)
    job.proc.join()
    if job.relay is not None:
        job.relay.join()
    return job


def _stop(running: list[Job]) -> None:
    """Terminate the children still running and wait for them: each unwinds (a checkpoint being written removes
    its temporary; the last complete one is what resumes), and after 30 s is killed."""
    for job in running:
        if job.proc is not None and job.proc.is_alive():
            job.proc.terminate()
    for job in running:
        if job.proc is not None:
            job.proc.join(timeout=30)
            if job.proc.is_alive():
                job.proc.kill()
                job.proc.join()
        if job.relay is not None:
            job.relay.join(timeout=5)


def _failure(job: Job, code: int, stopped: list[str]) -> StageFailed:
    why = job.error or (f"killed by signal {-code}" if code < 0 else f"exited with status {code} (its output is above)")
    also = (f"; stopped {', '.join(stopped)}, which resume{'s' * (len(stopped) == 1)} from the last checkpoint on the "
            "next run") if stopped else ""
    return StageFailed(f"{job.name}: {why}{also}", code if code > 0 else 1)
