"""Side-by-side stages (babyllama.side_by_side) with stand-in children: how a failure and a stop are reported.

The real children (`babyllama train`) are exercised in tests/test_pipeline.py; here plain Python processes
take their place so each fault case costs a fraction of a second.
"""

from __future__ import annotations

import sys
import time

import pytest

from babyllama.errors import ERROR_PREFIX
from babyllama.side_by_side import Job, StageFailed, run_jobs


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _failing(message: str, status: int) -> list[str]:
    return _child(f"import sys; print({ERROR_PREFIX + message!r}, file=sys.stderr); sys.exit({status})")


SLOW = _child("import time; print('[child] training', flush=True); time.sleep(120)")


@pytest.mark.parametrize("status", [2, 3])  # a user error, a resource (a full disk, memory)
def test_a_failing_stage_gives_its_one_line_and_status_and_stops_the_other(status, capsys) -> None:
    done: list[str] = []
    jobs = [Job("teacher:a", SLOW, lambda s: done.append("a")),
            Job("teacher:b", _failing("/run/checkpoints/b: no space left on device", status), lambda s: done.append("b"))]
    t0 = time.monotonic()
    with pytest.raises(StageFailed) as failed:
        run_jobs(jobs, at_once=2)
    assert time.monotonic() - t0 < 60  # the other was stopped, not waited for (it sleeps 120 s)
    assert failed.value.exit_code == status and done == []
    assert str(failed.value) == ("teacher:b: /run/checkpoints/b: no space left on device; stopped teacher:a, which "
                                 "resumes from the last checkpoint on the next run")
    assert jobs[0].proc is not None and jobs[0].proc.returncode < 0  # ended by our signal
    assert ERROR_PREFIX not in capsys.readouterr().err  # the child's line is the run's error, not shown twice


def test_a_stage_killed_by_a_signal_is_named_with_it() -> None:
    jobs = [Job("teacher:a", _child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), lambda s: None)]
    with pytest.raises(StageFailed, match=r"^teacher:a: killed by signal 9$") as failed:
        run_jobs(jobs, at_once=2)
    assert failed.value.exit_code == 1


def test_stages_beyond_at_once_wait_and_an_interrupt_stops_the_running_ones() -> None:
    jobs = [Job(f"teacher:{i}", SLOW, lambda s: None) for i in range(3)]

    def interrupt(seconds: float) -> None:  # a Ctrl-C landing in the run while teacher:1 still trains
        raise KeyboardInterrupt

    jobs[0].argv, jobs[0].done = _child("pass"), interrupt
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, at_once=2)
    assert jobs[1].proc is not None and jobs[1].proc.returncode < 0  # stopped, not left running
    assert jobs[2].proc is None  # never started
