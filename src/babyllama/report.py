"""The comparison report: does the distilled student beat its teachers and the control?

Everything is rebuilt from files on disk (the output contract of the other stages), so
`babyllama report OUT_DIR` works after any run, complete or not:

- ``config.yaml``, ``run_state.json`` (wall time per stage), ``data/manifest.json`` (word ledger)
- ``models/<name>/model.safetensors`` (parameter count) and ``models/<name>/metrics.jsonl`` (curves)
- ``eval/<name>/<file>``: the result files evaluate/registry.py names (perplexity, every zero-shot task
  the config switches on, ``finetune/<task>.json``), read through its ``model_results`` and
  ``model_headlines``: one column per ``headline_columns`` entry

Outputs ``report.md`` and a self-contained ``report.html`` (plots embedded as PNG data URIs) plus the
PNG files under ``plots/``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from babyllama import render, stats, threads
from babyllama.config import load_config
from babyllama.errors import UserError
from babyllama.evaluate.registry import (
    chance_rates,
    curve_panels,
    headline_columns,
    item_count,
    model_headlines,
    pair_items,
    pair_tasks,
    pairs_dataset,
)
from babyllama.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    read_json,
    stable_hash,
)
from babyllama.ledger import LEDGER_FILE, verdict_lines
from babyllama.ledger import build as build_ledger
from babyllama.protocols import implied_settings
from babyllama.roles import REPORT, Role, members, stage_order
from babyllama.run_state import RunState

# -- gathering -----------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a kill mid-write; the rest of the file is still good
    return rows


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path) if path.exists() else None
    except ValueError:
        return None


def saved_parameter_count(model_dir: Path) -> int | None:
    """Parameters of a saved model, from the safetensors header alone (no weights are read)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    return total


def summarize(out_dir: Path) -> dict[str, Any]:
    """Collect every figure the report shows into one JSON-able dict."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.yaml").exists():
        raise UserError(f"{out_dir}: no config.yaml — not a babyllama out_dir (run a stage first)")
    cfg = load_config(out_dir / "config.yaml", [f"out_dir={out_dir}"])
    state = RunState(out_dir).read_or_empty()
    models, withheld = [], []
    for member in members(cfg):
        model, notes = _model_summary(cfg, member, state)
        models.append(model)
        withheld += notes
    manifest = _read_json_or_none(out_dir / "data" / "manifest.json") or {}
    tests = differences(models, {m["name"]: m.pop("dev_windows") for m in models}, cfg.eval)
    found = evaluations(models)
    lines = verdict(models, tests, found)
    for m in models:  # the item records fed the tests above; summary.json keeps the aggregates only
        for key, _ in PAIR_TASKS:
            if m[key]:
                m[key] = {k: v for k, v in m[key].items() if k not in ("items", "paradigm_items")}
    return {
        "out_dir": str(out_dir),
        "config": cfg.model_dump(mode="json"),
        "protocol": {"name": cfg.eval.protocol, "finetune": bool(cfg.eval.finetune),
                     "settings": [[k, v, p] for k, v, p in implied_settings(cfg.eval)]},
        "columns": list(headline_columns(cfg).values()),
        "models": models,
        "evaluations": found,
        "differences": tests,
        "verdict": lines + chance_lines(cfg, models),
        "approximations": approximations(models, out_dir),
        "withheld": withheld,
        "stages": RunState(out_dir).seconds(stage_order(cfg)),
        "ledger": manifest.get("ledger"),
        "compliance": build_ledger(cfg),  # what ledger.json holds: words per model, rule verdicts
        "environment": environment(),
    }


def _model_summary(cfg: Any, member: Any, state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """One model's figures, each from a verified file, and a note for every result withheld (damaged, stale,
    or a model whose stage was redone and did not finish: the folder still holds the previous model)."""
    from babyllama.evaluate.registry import model_folder, model_result_files, result_key, result_notes

    # an existing teacher is read where `from` names it; its training there is not this run's (no metrics)
    existing = member.role is Role.EXTERNAL_TEACHER
    name, model_dir = member.name, model_folder(cfg, member.name) if existing else cfg.model_dir(member.name)
    record = state.get(member.stage) if isinstance(state, dict) and member.stage else None
    current = not (isinstance(record, dict) and record.get("done") is False and model_dir.exists())
    metrics = _read_jsonl(model_dir / "metrics.jsonl") if current and not existing else []
    train_rows = [r for r in metrics if "loss" in r]
    last = train_rows[-1] if train_rows else {}
    dev_rows = [r for r in metrics if r.get("dev_loss") is not None]
    # Dev lines carry the step only; every optimizer step sees the same number of tokens.
    per_step = last["tokens_seen"] / last["step"] if last.get("tokens_seen") and last.get("step") else None
    files = model_result_files(cfg, name) if current else []
    notes = [] if current else [f"`{name}`: its stage `{member.stage}` was started again and has not finished; "
                                f"{model_dir} still holds the previous model, so none of its numbers are shown"]
    notes += [f"`{r.path}`: {r.problem}; not shown (`babyllama run` computes it again)"
              for _, _, r in files if r.problem not in (None, "missing")]
    results = {result_key(j): r.value for _, j, r in files if r.value is not None}
    headlines, columns = model_headlines(cfg, name, results), headline_columns(cfg)
    ppl = results.get("perplexity") or {}
    train_dev = dev_rows[-1]["dev_loss"] if dev_rows else None
    source = "evaluate" if "ce_nats_per_token" in ppl else ("training" if train_dev is not None else None)
    return {
        "name": name,
        "role": member.role.value,
        "trained": current and (model_dir / "config.json").exists(),
        "parameters": saved_parameter_count(model_dir) if current and model_dir.exists() else None,
        "tokens_seen": last.get("tokens_seen"),
        "words_seen": last.get("words_seen"),
        "steps": last.get("step"),
        # the evaluate stage's dev CE; else, said so wherever it is shown, the training loop's last dev loss
        "dev_ce": ppl["ce_nats_per_token"] if source == "evaluate" else train_dev,
        "dev_ce_source": source,
        "dev_perplexity": ppl.get("perplexity"),
        "bits_per_word": ppl.get("bits_per_word"),
        "dev_scored": {k: ppl.get(k) for k in ("windows", "seq_len", "tokens_scored")} if source == "evaluate" else None,
        "dev_windows": ppl.get("window_ce") if source == "evaluate" else None,  # paired intervals; not in summary.json
        "blimp": results.get("blimp"),
        "supplement": results.get("supplement"),
        "headlines": headlines,  # {result key: headline}, as the registry reads them under the protocol
        "n_items": {k: item_count(v) for k, v in results.items() if k in headlines},  # for the at-chance check
        "scores": {c: headlines[k] for k, c in columns.items() if k in headlines},  # {report column: headline}
        "eval_notes": result_notes(cfg, name, results),  # ties, long inputs, items left out
        "curve": (results.get("curve") or {}).get("points", []),  # train.save_at_words
        "training": _training_facts(_read_json_or_none(model_dir / "training_summary.json")
                                    if current and not existing else None),
        "curves": {
            "train": [(r.get("tokens_seen"), r.get("loss"), r.get("ce"), r.get("kd")) for r in train_rows],
            "dev": [(r.get("tokens_seen") or (per_step and r["step"] * per_step), r["dev_loss"]) for r in dev_rows],
        },
    }, notes


def _training_facts(summary: dict[str, Any] | None) -> dict[str, Any]:
    """What training_summary.json says about the data a model saw and how its teachers were read."""
    if not summary:
        return {}
    return {"windows": summary.get("windows"), "steps": summary.get("steps"), "stream_hash": summary.get("stream_hash"),
            "teacher_cache": (summary.get("objective") or {}).get("cache")}


def _data_stream_line(student: dict[str, Any], control: dict[str, Any]) -> str:
    s, c = student["training"], control["training"]
    if not s.get("stream_hash") or not c.get("stream_hash"):
        return "Data stream: unknown (a model was trained before babyllama recorded its batches)."
    if s["stream_hash"] == c["stream_hash"]:
        return (f"Data stream: the student and the control trained on identical batches ({s['windows']} windows, "
                f"{s['steps']} optimizer steps, same order; stream hash {s['stream_hash'][:12]}).")
    return (f"Data stream: the student and the control did NOT see the same batches (student: {s['windows']} windows, "
            f"{s['steps']} steps; control: {c['windows']} windows, {c['steps']} steps), so part of their difference "
            "may come from the data; retrain the control (`babyllama run --force control`).")


def _teacher_line(cache: dict[str, Any] | None, out_dir: Path) -> str | None:
    if not cache:
        return None
    if not cache.get("enabled"):
        return "Teachers: live (the exact ensemble at every step; no cached approximation)."
    from babyllama.distill.formats import FORMATS, fidelity

    fmt = FORMATS.get(str(cache.get("mode")))
    if fmt is None:
        return f"Teachers: a teacher cache of a format this version does not know ({cache.get('mode')!r})."
    return fmt.report_line(cache, fidelity(out_dir / "cache" / str(cache.get("key"))))


def approximations(models: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """The cost of every approximation behind the student-control comparison, in plain sentences."""
    student = _with_role(models, Role.STUDENT)
    control = _with_role(models, Role.CONTROL)
    student, control = (m if m and m["training"] else None for m in (student, control))
    lines = []
    if student:
        line = _teacher_line(student["training"].get("teacher_cache"), out_dir)
        lines += [line] if line else []
    if student and control:
        lines.append(_data_stream_line(student, control))
    return lines


def _with_role(models: list[dict[str, Any]], role: Role) -> dict[str, Any] | None:
    """The first model summary of ``role`` (the student and the control are one each)."""
    return next((m for m in models if m["role"] == role.value), None)


def environment() -> dict[str, Any]:
    import importlib.metadata as md
    import os

    versions = {}
    for pkg in ("babyllama", "torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                           "packages": versions, "threads": threads.describe()}
    env["gpus"] = _gpu_names()
    return env


def _gpu_names() -> list[str]:
    """The GPUs torch sees; without a GPU driver on the machine there are none, and torch (seconds to
    import) is not loaded just to say so."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/proc/driver/nvidia/gpus", "/dev/kfd")):
        return []
    try:
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch missing or a broken CUDA install must not break the report
        return []


# -- the answer to the paper's question -------------------------------------------------------------


PAIR_TASKS = pair_tasks()


def _item_bits(result: dict[str, Any] | None, ev: Any) -> dict[str, np.ndarray] | None:
    """Per-item correctness grouped as the headline groups it (paradigms or phenomena), or None if unrecorded."""
    if not result:
        return None
    groups = pair_items(result, ev) if ev is not None else result.get("items")
    if not groups:
        return None
    return {g: np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1") for g, bits in groups.items()}


def differences(models: list[dict[str, Any]], windows: dict[str, list[float] | None] | None = None,
                ev: Any = None) -> list[dict[str, Any]]:
    """The student against every other model: dev CE paired over dev windows, minimal pairs paired over items.

    Each entry is ``student - other`` (one sign convention everywhere: negative dev CE and positive
    accuracy favour the student), with its 95% interval; a test needs both models' item-level records
    (``windows``: per-window dev CE by model; ``ev``: the evaluation settings, which group the items)."""
    student = _with_role(models, Role.STUDENT)
    if student is None:
        return []
    out = []
    order = {Role.CONTROL.value: 0, Role.TEACHER.value: 1}  # the control first: the question the run answers
    for other in sorted((m for m in models if m is not student), key=lambda m: order.get(m["role"], 2)):
        windows_a, windows_b = ((windows or {}).get(student["name"]), (windows or {}).get(other["name"]))
        same_source = student.get("dev_ce_source") == other.get("dev_ce_source")  # never full dev vs a subset
        if student["dev_ce"] is not None and other["dev_ce"] is not None and same_source:
            test = stats.paired_values(windows_a, windows_b) if windows_a and windows_b else None
            out.append({"metric": "dev_ce", "other": other["name"], "role": other["role"],
                        "a": student["dev_ce"], "b": other["dev_ce"], "test": test})
        for key, _ in PAIR_TASKS:
            a, b = student.get(key), other.get(key)
            head_a, head_b = (m.get("headlines", {}).get(key) for m in (student, other))  # the registry's headline
            if head_a is None or head_b is None:
                continue
            bits_a, bits_b = _item_bits(a, ev), _item_bits(b, ev)
            same = bits_a and bits_b and bits_a.keys() == bits_b.keys() and all(
                len(bits_a[g]) == len(bits_b[g]) for g in bits_a)
            test = stats.paired_items(bits_a, bits_b) if same else None
            out.append({"metric": key, "other": other["name"], "role": other["role"],
                        "a": head_a, "b": head_b, "test": test})
    return out


def difference_sentence(d: dict[str, Any], evaluations_: dict[str, str] | None = None) -> str:
    """One line: who won on which metric, or 'no detectable difference' when the paired interval spans 0.

    The difference is student - other with its sign, as everywhere in babyllama's reports (the sweep too)."""
    short = d["role"].split()[0]
    dev = d["metric"] == "dev_ce"
    scale, digits, unit = (1.0, 4, "nats/token") if dev else (100.0, 1, "points")
    diff, test = scale * (d["a"] - d["b"]), d["test"] or {}
    if dev:
        head, values = "Dev CE", f"{d['a']:.4f} vs {d['b']:.4f}; lower is better"
        how = f"95% interval paired over {test['n']:,} dev windows" if test.get("n") else ""
    else:
        head = f"{dict(PAIR_TASKS)[d['metric']]} ({(evaluations_ or {}).get(d['metric'] + ':short', 'minimal pairs')})"
        values = f"{100 * d['a']:.1f}% vs {100 * d['b']:.1f}%; higher is better"
        how = (f"95% paired item bootstrap; {test['only_a']:,} pairs right for the student only, {test['only_b']:,} "
               f"for the {short} only") if test else ""
    head += f" vs {short} `{d['other']}`"
    signed = f"student - {short} = {diff:+.{digits}f} {unit}"
    ahead = diff < 0 if dev else diff > 0
    if not test.get("ci"):
        return (f"{head}: the student is {'ahead' if ahead else 'behind'}, untested (no item-level record; rerun "
                f"the evaluation to get one): {signed} ({values}).")
    lo, hi = (scale * x for x in test["ci"])
    signed += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    if lo <= 0 <= hi:
        outcome = "no detectable difference (the interval spans 0)"
    else:
        outcome = "the distilled student beat it" if ahead else "the distilled student did NOT beat it"
    return f"{head}: {outcome}, {signed} ({values}; {how})."


def verdict(models: list[dict[str, Any]], tests: list[dict[str, Any]] | None = None,
            evaluations_: dict[str, str] | None = None) -> list[str]:
    """Plain sentences comparing the distilled student with the control and each teacher, each with its interval."""
    student = _with_role(models, Role.STUDENT)
    if student is None or student["dev_ce"] is None:
        return ["The distilled student has not been trained and evaluated yet: no comparison possible."]
    lines = []
    if student.get("dev_ce_source") == "training":
        lines.append("Dev CE below is the training loop's last dev loss (train.eval_windows windows), not the evaluate "
                     "stage's full dev perplexity, which is missing or not verified; models are compared on one source.")
    tests = differences(models) if tests is None else tests
    evaluations_ = evaluations_ if evaluations_ is not None else evaluations(models)
    lines += [difference_sentence(d, evaluations_) for d in tests]
    # never compare a full-dev CE with a training-time estimate on a subset of windows
    others = [m for m in models if m is not student and m["dev_ce"] is not None
              and m.get("dev_ce_source") == student.get("dev_ce_source")]
    control = _with_role(others, Role.CONTROL)
    teachers = [m for m in others if m["role"] == Role.TEACHER.value]
    if control and teachers:
        lines.append(render.teacher_gap_sentence(control["dev_ce"] - min(t["dev_ce"] for t in teachers)))
    return lines


def evaluations(models: list[dict[str, Any]]) -> dict[str, str]:
    """{task: what it was scored on, with its size and headline}, from the first model that has the result."""
    out = {}
    dev = next((m["dev_scored"] for m in models if m.get("dev_scored") and m["dev_scored"].get("windows")), None)
    if dev:
        out["dev_ce"] = (f"the run's dev split, all {dev['windows']:,} non-overlapping windows of {dev['seq_len']} tokens "
                         f"({dev['tokens_scored']:,} tokens predicted); mean next-token cross-entropy")
    for key, label in PAIR_TASKS:
        result = next((m[key] for m in models if m.get(key)), None)
        if result:
            out[key] = pairs_dataset(result, label)
            out[f"{key}:short"] = pairs_dataset(result, label, short=True)
    return out


def chance_lines(cfg: Any, models: list[dict[str, Any]]) -> list[str]:
    """A line for each task on which every model is within noise of the chance rate: a difference there,
    however it reads, is not evidence (EWoK sits near 50% for text-only models at this scale)."""
    lines = []
    columns = headline_columns(cfg)
    for key, rate in chance_rates(cfg).items():
        scores = [(m["headlines"][key], m["n_items"][key]) for m in models
                  if key in m["headlines"] and (m.get("n_items") or {}).get(key)]
        if scores and stats.at_chance(scores, rate):
            band = max(stats.chance_band(rate, n) for _, n in scores)
            lines.append(f"{columns.get(key, key).removesuffix(' %')}: at chance — every model scores within noise of "
                         f"{100 * rate:.0f}% (±{100 * band:.1f} points at 95% on its items); its differences are not evidence.")
    return lines


# -- tables ----------------------------------------------------------------------------------------------


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if kind == "int":
        return f"{round(v):,}"  # as the model card rounds: one words-seen figure everywhere
    if kind == "pct":
        return f"{100 * v:.1f}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _dev_ce_cell(m: dict[str, Any]) -> str:
    """The dev CE, marked when it is the training loop's estimate rather than the evaluate stage's result."""
    cell = _fmt(m["dev_ce"])
    return f"{cell} (train)" if m.get("dev_ce_source") == "training" else cell


def _table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    columns = summary.get("columns") or ["BLiMP %", "supplement %"]
    header = ["model", "role", "params", "tokens seen", "words seen", "dev CE", "dev ppl", "bits/word", *columns]
    rows = []
    for m in summary["models"]:
        rows.append([
            m["name"], m["role"], _fmt(m["parameters"], "int"), _fmt(m["tokens_seen"], "int"),
            _fmt(m["words_seen"], "int"), _dev_ce_cell(m), _fmt(m["dev_perplexity"]), _fmt(m["bits_per_word"]),
            *[_fmt(m["scores"].get(c), "pct") for c in columns],
        ])
    return header, rows


def _protocol_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every setting the evaluation protocol implies, and where the config overrides it."""
    settings = summary["protocol"]["settings"]
    if not summary["protocol"].get("finetune", True):  # no fine-tuning ran: its settings would only mislead
        settings = [s for s in settings if not s[0].startswith("eval.finetune")]
    rows = [[k, str(v), "" if v == p else f"overridden (protocol: {p})"] for k, v, p in settings]
    if not summary["protocol"].get("finetune", True):
        rows.append(["fine-tuning", "not run", "eval.finetune is empty; its settings are left out"])
    return ["setting", "value", "note"], rows




def comparison_table(summary: dict[str, Any]) -> str:
    return render.markdown_table(*_table_rows(summary))


def _phenomena_table(summary: dict[str, Any], key: str, group: str) -> tuple[list[str], list[list[str]]] | None:
    results = {m["name"]: m[key] for m in summary["models"] if m[key]}
    if not results:
        return None
    names = sorted({p for r in results.values() for p in r.get(group, {})})
    header = [group.rstrip("s"), *results]
    rows = [[p, *[_fmt(r.get(group, {}).get(p, {}).get("accuracy"), "pct") for r in results.values()]] for p in names]
    return header, rows


# -- plots -----------------------------------------------------------------------------------------------


FONT = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
        "xtick.labelsize": 10, "ytick.labelsize": 10}  # readable when a 1280 px page shows the figure at ~1000 px


def _figures() -> tuple[tuple[str, Callable[[Any, dict[str, Any]], Any]], ...]:
    """Each figure's name and the function that draws it (which returns None when there is nothing to draw)."""
    return (("loss_curves", _ce_figure), ("student_vs_control", _student_control_figure),
            ("distill_parts", _distill_figure), ("learning_curves", _curve_figure),
            ("blimp_phenomena", _phenomena_figure))


#: plots/<this>: per figure, the key of what it was drawn from and the sha256 of the PNG written for it.
PLOT_RECORD = "plots.json"


def _plot_keys(summary: dict[str, Any]) -> dict[str, str]:
    """Per figure, the identity of what it draws: the model summaries it reads, the panels, the style, the
    matplotlib version and this module's code (a changed figure function draws anew)."""
    from importlib.metadata import version

    base = {"models": summary["models"], "panels": curve_panels(), "font": FONT, "matplotlib": version("matplotlib"),
            "code": file_sha256(__file__)}
    return {name: stable_hash({**base, "figure": name}) for name, _ in _figures()}


def _drawn_before(plot_dir: Path, keys: dict[str, str]) -> dict[str, str | None]:
    """The figures a previous report drew from the same inputs: {name: the sha256 of its PNG, which the file
    on disk still matches, or None when there was nothing to draw}. A figure not in it is drawn (again)."""
    try:
        record = read_json(plot_dir / PLOT_RECORD)
    except (OSError, ValueError):
        return {}
    done: dict[str, str | None] = {}
    for name, key in keys.items():
        entry = record.get(name) if isinstance(record, dict) else None
        if not isinstance(entry, dict) or entry.get("key") != key:
            continue
        path = plot_dir / f"{name}.png"
        if entry.get("sha256") is None or (path.is_file() and file_sha256(path) == entry["sha256"]):
            done[name] = entry.get("sha256")
    return done


def make_plots(summary: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    """PNG plots, each showing comparable quantities on one axis: every model's CE (the student's CE part,
    not its combined loss), the student against the control on dev CE, the student's KD part on its own,
    BLiMP per phenomenon. Written atomically. A figure whose inputs are unchanged since the last report, with
    its PNG intact, is not drawn again (matplotlib costs a second or two of every `run` and `report`)."""
    keys = _plot_keys(summary)
    before = _drawn_before(plot_dir, keys)
    record = {name: {"key": keys[name], "sha256": sha} for name, sha in before.items()}
    plots = {name: plot_dir / f"{name}.png" for name, sha in before.items() if sha is not None}
    if len(before) < len(keys):
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with plt.rc_context(FONT):
            for name, figure in [(n, f) for n, f in _figures() if n not in before]:
                fig = figure(plt, summary)
                record[name] = {"key": keys[name], "sha256": None}
                if fig is None:
                    continue
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
                plt.close(fig)
                plots[name] = plot_dir / f"{name}.png"
                atomic_write_bytes(plots[name], buf.getvalue())
                record[name]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        atomic_write_json(plot_dir / PLOT_RECORD, record)
    return {name: plots[name] for name, _ in _figures() if name in plots}  # in figure order


def _train_ce(m: dict[str, Any]) -> list[tuple[float, float]]:
    """(tokens seen, training CE): the student's CE part, everyone else's loss (their loss is CE)."""
    distilled = any(ce is not None for _, _, ce, _ in m["curves"]["train"])
    return [(t, ce if distilled else loss) for t, loss, ce, _ in m["curves"]["train"]
            if t is not None and (ce if distilled else loss) is not None]


def _ce_figure(plt: Any, summary: dict[str, Any]) -> Any:
    trained = [m for m in summary["models"] if m["curves"]["train"]]
    if not trained:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, m in enumerate(trained):
        if tr := _train_ce(m):
            ax.plot(*zip(*tr, strict=True), color=f"C{i}", alpha=0.6, label=f"{m['name']} train CE")
        if dev := [(t, d) for t, d in m["curves"]["dev"] if t is not None]:
            ax.plot(*zip(*dev, strict=True), color=f"C{i}", marker="o", linestyle="--", label=f"{m['name']} dev CE")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Cross-entropy while training (the student's CE part; its KD part is plotted separately)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2)  # below the axes: never over a curve
    ax.grid(alpha=0.3)
    return fig


def _student_control_figure(plt: Any, summary: dict[str, Any]) -> Any:
    """The two models the verdict compares, on their own axis: dev CE while training, the final value marked."""
    pair = [m for m in (_with_role(summary["models"], Role.STUDENT), _with_role(summary["models"], Role.CONTROL))
            if m and m["curves"]["dev"]]
    if len(pair) < 2:
        return None
    fig, ax = plt.subplots(figsize=(10, 4))
    for m, color in zip(pair, ("C0", "C3"), strict=True):
        dev = [(t, d) for t, d in m["curves"]["dev"] if t is not None]
        if dev:
            ax.plot(*zip(*dev, strict=True), color=color, marker="o", label=f"{m['name']} ({m['role']}) dev CE")
        if m["dev_ce"] is not None:
            ax.axhline(m["dev_ce"], color=color, linestyle=":", linewidth=1,
                       label=f"{m['name']} evaluated: {m['dev_ce']:.4f}")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("dev CE (nats/token)")
    ax.set_title("Student against control on dev CE, lower is better\n(dots: during training, on a subset of the "
                 "dev windows; dotted lines: evaluated on all of them)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)
    ax.grid(alpha=0.3)
    return fig


def _distill_figure(plt: Any, summary: dict[str, Any]) -> Any:
    """The student's loss parts, each on its own axis: CE (nats/token) and the KD term (T²·divergence)."""
    student = _with_role(summary["models"], Role.STUDENT)
    if not student:
        return None
    rows = [(t, ce, kd) for t, _, ce, kd in student["curves"]["train"] if t is not None and ce is not None]
    if not rows:
        return None
    ts, ces, kds = zip(*rows, strict=True)
    has_kd = any(k is not None for k in kds)
    fig, axes = plt.subplots(1, 2 if has_kd else 1, figsize=(10, 3.8), squeeze=False)
    axes[0][0].plot(ts, ces, color="C0")
    axes[0][0].set_title("CE part (nats/token)")
    if has_kd:
        axes[0][1].plot(ts, [k if k is not None else float("nan") for k in kds], color="C1")
        axes[0][1].set_title("KD part (T² · divergence)")
    for ax in axes[0]:
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Distillation loss parts of {student['name']}")
    fig.tight_layout()
    return fig


def _phenomena_figure(plt: Any, summary: dict[str, Any]) -> Any:
    table = _phenomena_table(summary, "blimp", "phenomena")
    if not table:
        return None
    header, rows = table
    names = header[1:]
    fig, ax = plt.subplots(figsize=(max(10, len(rows) * 0.9), 5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [float(r[j + 1]) if r[j + 1] != "–" else 0.0 for r in rows]
        ax.bar([i + j * width for i in range(len(rows))], vals, width=width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([r[0] for r in rows], rotation=45, ha="right")
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.set_title("BLiMP accuracy per phenomenon (dotted: chance)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.42), ncols=min(4, len(names)))
    return fig


def _curve_figure(plt: Any, summary: dict[str, Any]) -> Any:
    """Dev CE and every fast-suite score against words seen (train.save_at_words checkpoints): one panel per
    metric; the student (solid) and its control (dashed) side by side in each, teachers thin and grey."""
    models = [m for m in summary["models"] if m.get("curve")]
    if not models:
        return None
    panels = [(k, label) for k, label in curve_panels() if any(k in p for m in models for p in m["curve"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    style = {Role.STUDENT.value: {"linestyle": "-", "linewidth": 2}, Role.CONTROL.value: {"linestyle": "--", "linewidth": 2}}
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for m in models:
            pts = [(p["words"], p[key] * (1 if key == "dev_ce" else 100)) for p in m["curve"] if p.get(key) is not None]
            if pts:
                look = style.get(m["role"], {"linestyle": ":", "linewidth": 1, "color": "grey"})
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{m['name']} ({m['role']})", **look)
        ax.set_xscale("log")
        ax.set_xlabel("words seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves: student vs control at each checkpoint")
    return fig


def _curve_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    models = [m for m in summary["models"] if m.get("curve")]
    if not models:
        return None
    words = sorted({p["words"] for m in models for p in m["curve"]})
    header = ["words seen", *[f"{m['name']} dev CE / BLiMP %" for m in models]]
    rows = []
    for w in words:
        cells = []
        for m in models:
            p = next((p for p in m["curve"] if p["words"] == w), {})
            cells.append(f"{_fmt(p.get('dev_ce'))} / {_fmt(p.get('blimp'), 'pct')}")
        rows.append([f"{w:,}", *cells])
    return header, rows


# -- writing -----------------------------------------------------------------------------------------


PLOTS_AFTER = "What each column was scored on"


def _difference_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The verdict's numbers as a table: one row per (metric, other model), signed student - other."""
    header = ["metric", "student vs", "student", "other", "student - other", "95% interval", "reading"]
    rows = []
    for d in summary["differences"]:
        dev = d["metric"] == "dev_ce"
        scale, digits = (1.0, 4) if dev else (100.0, 1)
        ci = (d["test"] or {}).get("ci")
        lo, hi = (scale * x for x in ci) if ci else (None, None)
        diff = scale * (d["a"] - d["b"])
        ahead = diff < 0 if dev else diff > 0
        if ci is None:
            reading = "untested"
        elif lo <= 0 <= hi:
            reading = "no detectable difference"
        else:
            reading = "student better" if ahead else "student worse"
        value = (lambda v: f"{v:.4f}") if dev else (lambda v: f"{100 * v:.1f}%")
        rows.append([("dev CE (nats/token)" if dev else f"{dict(PAIR_TASKS)[d['metric']]} (points)"),
                     f"{d['role'].split()[0]} {d['other']}", value(d["a"]), value(d["b"]), f"{diff:+.{digits}f}",
                     f"[{lo:+.{digits}f}, {hi:+.{digits}f}]" if ci else "–", reading])
    return header, rows


def _sections(summary: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(title, kind, payload) blocks shared by the Markdown and HTML writers."""
    blocks: list[tuple[str, str, Any]] = [("Does distillation help?", "list", summary["verdict"])]
    if summary.get("differences"):
        blocks.append(("Differences (student - other model, 95% paired intervals)", "table", _difference_rows(summary)))
    if summary.get("approximations"):
        blocks.append(("What the comparison rests on", "list", summary["approximations"]))
    compliance = summary.get("compliance")
    if compliance and compliance.get("verdicts"):
        title = f"Rules: {compliance['rules']}" + (" (this run BREAKS a rule)" if compliance.get("breaks_rules") else "")
        blocks.insert(1, (title, "list", verdict_lines(compliance)))
    blocks.append(("Comparison", "table", _table_rows(summary)))
    notes = list(summary.get("withheld") or [])
    if any(m.get("dev_ce_source") == "training" for m in summary["models"]):
        notes.append("dev CE marked (train): the training loop's last dev loss on train.eval_windows windows, shown "
                     "because the evaluate stage's perplexity result is missing or not verified")
    if notes:
        blocks.append(("Not shown, or shown from another source", "list", notes))
    if summary.get("evaluations"):
        names = {"dev_ce": "dev CE", **dict(PAIR_TASKS)}
        blocks.append((PLOTS_AFTER, "list",
                       [f"{names.get(k, k)}: {v}." for k, v in summary["evaluations"].items() if ":" not in k]))
    if summary.get("protocol"):
        blocks.append((f"Evaluation protocol: {summary['protocol']['name']}", "table", _protocol_rows(summary)))
    notes = [f"{m['name']}: {n}" for m in summary["models"] for n in m.get("eval_notes") or []]
    if notes:
        blocks.append(("Zero-shot notes (ties, long inputs, items left out)", "list", notes))
    curves = _curve_rows(summary)
    if curves:
        blocks.append(("Learning curves (train.save_at_words)", "table", curves))
    for key, title in (("blimp", "BLiMP per phenomenon (%)"), ("supplement", "BLiMP supplement (%)")):
        group = "phenomena" if key == "blimp" else "paradigms"
        t = _phenomena_table(summary, key, group)
        if t:
            blocks.append((title, "table", t))
    if summary["stages"]:
        rows = [[k if k != REPORT else f"{k} (this build)", f"{v:.1f}" if v is not None else "–"]
                for k, v in summary["stages"].items()]
        blocks.append(("Wall time per stage (s, all invocations)", "table", (["stage", "seconds"], rows)))
    ledger = summary.get("ledger")
    if ledger:
        rows = [[src, f"{w:,}"] for src, w in (ledger.get("words_by_source") or {}).items()]
        rows.append(["**total**", f"{ledger.get('total_words', 0):,}"])
        rows.append(["budget", f"{ledger.get('budget', 0):,}"])
        blocks.append(("Word-budget ledger (training words)", "table", (["source", "words"], rows)))
    if compliance:
        blocks.append(("Words seen per model (ledger.json)", "table", _exposure_rows(compliance)))
    env = summary["environment"]
    env_rows = [["python", env["python"]], ["platform", env["platform"]], ["cpu", f"{env['cpu']} ({env['cpu_count']} cores)"],
                ["gpus", ", ".join(env["gpus"]) or "none"], ["CPU threads", _threads_cell(env.get("threads"))]]
    env_rows += [[k, v or "–"] for k, v in env["packages"].items()]
    blocks.append(("Environment", "table", (["what", "value"], env_rows)))
    return blocks


def _exposure_rows(compliance: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Words in the pool, words seen and epochs per model; the student's second reading last."""
    rows = []
    for name, m in compliance["models"].items():
        seen = "not known (trained elsewhere)" if m["role"] == Role.EXTERNAL_TEACHER.short else _fmt(m.get("words_seen"), "int")
        rows.append([name, m["role"], _fmt(m.get("pool_words"), "int"), seen + (" (planned)" if m.get("planned") else ""),
                     "–" if m.get("epochs") is None else f"{m['epochs']:.2f}"])
    if compliance.get("student_with_teachers_words") is not None:
        rows.append(["student + teachers", "second reading of the cap", "", _fmt(compliance["student_with_teachers_words"],
                                                                                 "int"), ""])
    return ["model", "role", "words in pool", "words seen", "epochs"], rows


def _threads_cell(t: dict | None) -> str:
    """The thread policy in one cell (summaries written before it was recorded have none)."""
    if not t:
        return "–"
    if "threads" not in t:
        return f"{t.get('torch_threads', '?')} ({t['source']})"
    return (f"{t['threads']} ({t['source']}; {t['affinity_cpus']} CPUs usable"
            f"{', quota ' + format(t['quota_cpus'], 'g') if t.get('quota_cpus') else ''}), "
            f"OMP_WAIT_POLICY={t['wait_policy']}")


def _plots_after(summary: dict[str, Any]) -> str:
    return PLOTS_AFTER if summary.get("evaluations") else "Comparison"


def render_markdown(summary: dict[str, Any], plots: dict[str, Path], out_dir: Path) -> str:
    import yaml

    parts = [f"# babyllama report — `{summary['out_dir']}`", ""]
    for title, kind, payload in _sections(summary):
        parts += [f"## {title}", ""]
        parts.append("\n".join(f"- {x}" for x in payload) if kind == "list" else render.markdown_table(*payload))
        parts.append("")
        if title == _plots_after(summary) and plots:
            parts += [f"![{name}]({p.relative_to(out_dir)})" for name, p in plots.items()] + [""]
    parts += ["## Resolved config", "", "```yaml", yaml.safe_dump(summary["config"], sort_keys=False).rstrip(), "```", ""]
    return "\n".join(parts)


def render_html(summary: dict[str, Any], plots: dict[str, Path]) -> str:
    import yaml

    parts = [render.page_head("babyllama report"), f"<h1>babyllama report — {html.escape(summary['out_dir'])}</h1>"]
    for title, kind, payload in _sections(summary):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(render.html_list(payload) if kind == "list" else render.html_table(*payload))
        if title == _plots_after(summary):
            for name, p in plots.items():
                data = base64.b64encode(p.read_bytes()).decode()
                parts.append(render.html_image(name, data))
    parts.append("<h2>Resolved config</h2>" + render.folded(
        "config.yaml as this run resolved it (click to show)",
        "<pre>" + html.escape(yaml.safe_dump(summary["config"], sort_keys=False)) + "</pre>"))
    parts.append("<p>Every figure of this report is in <code>summary.json</code> next to it (see the README, "
                 "&ldquo;What a run writes&rdquo;).</p></body></html>")
    return "\n".join(parts)


def build_report(out_dir: Path) -> list[Path]:
    """Rebuild report.md, report.html and plots/ from what is on disk."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    summary = summarize(out_dir)
    plots = make_plots(summary, out_dir / "plots")
    # Its own time, measured now: run_state.json records the report stage only after this returns.
    summary["stages"][REPORT] = time.perf_counter() - start
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, render_markdown(summary, plots, out_dir))
    atomic_write_text(html_path, render_html(summary, plots))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_json(out_dir / LEDGER_FILE, summary["compliance"])
    return [md_path, html_path]
