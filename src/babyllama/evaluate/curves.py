"""`babyllama evaluate curve CONFIG`: the fast suite on every kept checkpoint of every model, outside `run`.

The same job `run`'s evaluate stage does (registry ``curves``: dev CE and eval.fast_data's sets, or the full
zero-shot data, at each train.save_at_words checkpoint), for teachers, student and control alike, so a
learning curve can be (re)scored without redoing the rest. Results go where the report reads them:
``<out_dir>/eval/<model>/curve.json``.
"""

from __future__ import annotations

from pathlib import Path

from babyllama.config import Config
from babyllama.errors import UserError


def evaluate_curves(cfg: Config) -> dict[str, Path]:
    """{model: curve.json written} for every model with kept checkpoints (UserError when none has any)."""
    from babyllama.evaluate.registry import (
        current_inputs,
        curve_checkpoints,
        evaluator,
        result_path,
        write_result,
    )

    job = next(iter(evaluator("curves").jobs(cfg)), None)
    if job is None:
        raise UserError("evaluate curve: no model sets train.save_at_words (e.g. 'babylm'), or eval.curves is false")
    written = {}
    for m in cfg.models():
        if not curve_checkpoints(cfg, m.name):
            continue
        print(f"[curve] {m.name}: {len(curve_checkpoints(cfg, m.name))} checkpoints", flush=True)
        inputs = current_inputs(cfg, m.name, job)  # before computing: what the result is computed from
        write_result(cfg, m.name, job, inputs, job.run(cfg.model_dir(m.name)))
        written[m.name] = result_path(cfg, m.name, job)
    if not written:
        raise UserError(f"evaluate curve: no checkpoints under {cfg.out / 'checkpoints'}/<model>/at_words/ yet "
                        "(train first, with train.save_at_words)")
    return written
