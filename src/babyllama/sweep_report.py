"""The sweep's answer: every member's numbers, paired comparisons with intervals, verdicts, a forest plot.

Read from the members' run directories through the evaluation registry (the one reader of results,
so every headline here is the report's and the model card's), so ``babyllama sweep --collect`` works
whenever some members are finished. Writes, under ``<out_dir>/sweep/``: ``sweep.json`` (every
member's numbers and every interval, for papers and dashboards), ``report.md``, a self-contained
``report.html`` and ``plots/forest.png``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from babyllama import render, stats
from babyllama.config import Config
from babyllama.errors import UserError
from babyllama.evaluate.registry import (
    chance_rates,
    headline_columns,
    item_count,
    model_headlines,
    model_result_files,
    pair_items,
    result_key,
)
from babyllama.io import atomic_write_bytes, atomic_write_text
from babyllama.roles import EVALUATE, Role, members
from babyllama.run_state import RunState
from babyllama.sweep import SweepMember, member_config, sweep_dir

#: Family-wise error rate of the verdict lines (Holm's adjustment over every comparison of a sweep).
ALPHA = 0.05
#: The dev cross-entropy's key (the perplexity evaluator's headline) and how it is shown.
DEV_CE = "dev_ce"


def sweep_metrics(cfg: Config) -> dict[str, tuple[str, str, bool, int, float]]:
    """metric -> (title, unit, higher is better, digits, scale applied to differences): dev CE, then every
    headline column the registry declares for this config (BLiMP, supplement, EWoK, ..., fine-tuning tasks)."""
    out = {DEV_CE: ("dev CE", "nats/token", False, 3, 1.0)}
    for key, column in headline_columns(cfg).items():
        out[key] = (column.removesuffix(" %"), "points", True, 1, 100.0)
    return out


def read_member(mcfg: Config) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """({model: {role, dev_ce, <headline key>: value}}, {model: {<headline key>: items}}), or why the member
    cannot be counted: unfinished, run under another config, or a result the registry's reader does not
    verify (missing, damaged or stale). A member is counted whole or not at all, so no seed drops silently
    out of an interval."""
    from babyllama.pipeline import outdated_stage

    try:
        if RunState(mcfg.out).finished_with(EVALUATE) is None:
            return "not finished"
    except UserError as e:
        return str(e)
    try:
        outdated = outdated_stage(mcfg)
    except (UserError, OSError) as e:
        outdated = f"its run cannot be checked ({e})"
    if outdated:
        return outdated
    roles = {m.name: m.role.kind for m in members(mcfg)}
    numbers, items = {}, {}
    keys = headline_columns(mcfg)
    for name, role in roles.items():
        results = {}
        for _, job, result in model_result_files(mcfg, name):
            if result.value is None:
                return f"{result.path.relative_to(mcfg.out)} is {result.problem}"
            results[result_key(job)] = result.value
        headlines = model_headlines(mcfg, name, results)
        # dev CE only over the student's tokens (None for a teacher with its own tokenizer); bits/word for every model
        numbers[name] = {"role": role, DEV_CE: headlines.get("perplexity"), **{k: headlines.get(k) for k in keys},
                         "bits_per_word": (results.get("perplexity") or {}).get("bits_per_word"),
                         "n_items": {k: item_count(results[k]) for k in keys if k in results}}
        items[name] = {k: pair_items(results[k], mcfg.eval) for k in keys if k in results}
    return numbers, items


def _by_role(numbers: dict[str, Any], role: Role) -> str | None:
    """The model of ``role`` in one member's numbers (``sweep.json`` names roles by ``Role.kind``)."""
    return next((n for n, v in numbers.items() if v["role"] == role.kind), None)


def _bits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8) == ord("1")


def _bootstrap(pairs: list[tuple[dict | None, dict | None]], replicates: int) -> list[float] | None:
    """The paired item bootstrap over seeds, when every seed has item-level results for both models."""
    seeds = []
    for a, b in pairs:
        if not a or not b or set(a) != set(b) or any(len(a[k]) != len(b[k]) for k in a):
            return None
        seeds.append({k: (_bits(a[k]), _bits(b[k])) for k in a})
    return list(stats.bootstrap_interval(seeds, replicates)) if seeds else None


def compare(name: str, a: dict[int, tuple], b: dict[int, tuple], metric: str, spec: tuple[str, str, bool, int, float],
            replicates: int) -> dict[str, Any] | None:
    """A - B on one metric (``spec`` as sweep_metrics gives it), paired by seed; a/b map seed -> (numbers, items)."""
    title, unit, higher, digits, scale = spec
    seeds = [s for s in sorted(set(a) & set(b)) if a[s][0].get(metric) is not None and b[s][0].get(metric) is not None]
    if not seeds:
        return None
    out = {"name": name, "metric": metric, "title": title, "unit": unit, "higher": higher, "digits": digits,
           **stats.paired({s: scale * (a[s][0][metric] - b[s][0][metric]) for s in seeds})}
    if metric != DEV_CE:
        boot = _bootstrap([(a[s][1].get(metric), b[s][1].get(metric)) for s in seeds], replicates)
        out["bootstrap_ci"] = [scale * x for x in boot] if boot else None
    return out


def collect(base: Config, ms: list[SweepMember]) -> dict[str, Any]:
    """Every member's numbers, every comparison, the verdict; written as sweep.json, report.md/html, plots/."""
    from babyllama.sweep import off_plan

    rows, missing, reasons = [], [], {}
    refused = off_plan(base, ms)
    per_point: dict[str, dict[int, tuple[dict, dict]]] = {}
    for m in ms:
        got = refused.get(m.name) or read_member(member_config(base, m))
        if isinstance(got, str):
            missing.append(m.name)
            reasons[m.name] = got
            continue
        rows.append({"name": m.name, "seed": m.seed, "setting": m.label, "point": m.point, "models": got[0]})
        per_point.setdefault(m.label, {})[m.seed] = got
    comparisons, verdicts, conditions, settings = [], [], [], []
    default = per_point.get("default", {})

    def model_rows(runs: dict[int, tuple[dict, dict]], role: Role) -> dict[int, tuple]:
        out = {}
        for seed, (numbers, items) in runs.items():
            name = _by_role(numbers, role)
            if name is not None:
                out[seed] = (numbers[name], items[name])
        return out

    for label, runs in per_point.items():
        at = "" if label == "default" else f" @ {label}"
        student, control = model_rows(runs, Role.STUDENT), model_rows(runs, Role.CONTROL)
        for metric, spec in sweep_metrics(base).items():
            title, _, higher, digits, _ = spec
            c = compare(f"student - control{at}", student, control, metric, spec, base.sweep.bootstrap)
            if c:
                c["who"] = ("the distilled student" + ("" if not at else f" at {label}"), "the control")
                comparisons.append(c)
            if label != "default":
                c = compare(f"{label} - default (student)", student, model_rows(default, Role.STUDENT), metric, spec,
                            base.sweep.bootstrap)
                if c:
                    c["who"] = (f"the student with {label}", "the default student")
                    comparisons.append(c)
        gap = teacher_gap(runs)
        conditions.append(_condition(label, gap, base.sweep.teacher_seeds == "shared"))
        effect = next((c for c in comparisons if c["name"] == f"student - control{at}" and c["metric"] == "dev_ce"), None)
        settings.append({"setting": label, "teacher_gap": gap and gap[0], "student_minus_control_dev_ce": effect and
                         {k: effect[k] for k in ("mean", "ci", "holds", "n")}})
    verdicts = _verdicts(comparisons, _at_chance(base, rows))
    result = {"out_dir": str(base.out), "seeds": sorted({m.seed for m in ms}), "members": rows, "missing": missing,
              "missing_why": reasons,
              "comparisons": comparisons, "verdict": verdicts, "conditions": [c for c in conditions if c],
              "settings": settings, "conditional_on": conditional_on(base), "columns": headline_columns(base)}
    write(base, result)
    return result


def conditional_on(base: Config) -> list[str]:
    """What the seeds did NOT vary, so what every interval is conditional on (it measures training noise only)."""
    lines = ["The data split and the evaluation data are the same for every seed (the experiment's seed)."]
    if base.sweep.teacher_seeds == "shared":
        lines.append("The teachers were trained once and are shared by every seed (sweep.teacher_seeds: shared): the "
                     "intervals do not include teacher-training noise; sweep.teacher_seeds: per_seed would.")
    else:
        lines.append("Each seed trained its own teachers (sweep.teacher_seeds: per_seed): teacher-training noise is included.")
    cache = base.distill.cache
    if cache.enabled:
        from babyllama.distill.formats import cache_format

        lines.append(cache_format(cache.mode).sweep_line(cache))
    return lines


def _at_chance(base: Config, rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """{metric: (chance, widest 95% band)} of every headline where each model of each member is within noise of
    chance (a score a guessing model reaches on that many items): there, no comparison is evidence."""
    out = {}
    for key, chance in chance_rates(base).items():
        scores = [(m[key], m["n_items"][key]) for r in rows for m in r["models"].values()
                  if m.get(key) is not None and (m.get("n_items") or {}).get(key)]
        if scores and stats.at_chance(scores, chance):
            out[key] = (chance, max(stats.chance_band(chance, n) for _, n in scores))
    return out


def _verdicts(comparisons: list[dict[str, Any]], chance: dict[str, tuple[float, float]]) -> list[str]:
    """One line on how many comparisons were made and how many survive Holm's adjustment, a line per task at
    chance, then one sentence per comparison marked with its adjusted p (and 'at chance' where it is)."""
    adjusted = stats.holm([c.get("p") for c in comparisons])
    for c, p in zip(comparisons, adjusted, strict=True):
        c["p_holm"], c["survives_holm"], c["at_chance"] = p, p is not None and p <= ALPHA, c["metric"] in chance
    tested = sum(p is not None for p in adjusted)
    survive = sum(c["survives_holm"] for c in comparisons)
    lines = [f"{len(comparisons)} comparisons were made ({tested} with two or more seeds, tested by a paired t test); "
             f"after Holm's adjustment for all {tested} at the {ALPHA:.0%} level, {survive} survive "
             "(marked 'survives Holm' below)."]
    for key, (rate, band) in chance.items():
        title = next((c["title"] for c in comparisons if c["metric"] == key), key)
        lines.append(f"{title}: at chance — every model scores within noise of {100 * rate:.0f}% "
                     f"(±{100 * band:.1f} points at 95% for its item count); its differences are not evidence.")
    for c in comparisons:
        text = _sentence(*c["who"], c, c["title"], c["higher"], c["digits"])
        if c["p_holm"] is not None:
            text += (f" Holm-adjusted p = {c['p_holm']:.3f}: "
                     + ("survives Holm." if c["survives_holm"] else "does not survive Holm."))
        lines.append(("(at chance) " if c["at_chance"] else "") + text)
    return lines


def _sentence(a: str, b: str, c: dict[str, Any], title: str, higher: bool, digits: int) -> str:
    text = f"{title}: " + stats.verdict(a, b, c, c["unit"], higher, digits, expr=c["name"])
    if c.get("bootstrap_ci"):
        lo, hi = c["bootstrap_ci"]
        text += f" Item bootstrap (items resampled within each seed): [{lo:+.{digits}f}, {hi:+.{digits}f}] {c['unit']}."
    return text


def teacher_gap(runs: dict[int, tuple[dict, dict]]) -> tuple[float, int] | None:
    """(control dev CE - best teacher dev CE, averaged over seeds; the number of seeds), None without both."""
    gaps = []
    for numbers, _ in runs.values():
        control = _by_role(numbers, Role.CONTROL)
        teachers = [v["dev_ce"] for v in numbers.values() if v["role"] == Role.TEACHER.kind and v["dev_ce"] is not None]
        if control and teachers and numbers[control]["dev_ce"] is not None:
            gaps.append(numbers[control]["dev_ce"] - min(teachers))
    return (float(np.mean(gaps)), len(gaps)) if gaps else None


def _condition(label: str, gap: tuple[float, int] | None, shared: bool = True) -> str | None:
    """The teacher-gap condition of one setting (render.teacher_gap_sentence), or None without a gap."""
    if gap is None:
        return None
    (value, n), where = gap, "" if label == "default" else f" ({label})"
    teachers = "the teachers trained once, shared by every seed" if shared else "the teachers trained once per seed"
    return render.teacher_gap_sentence(value, where=where, basis=f" (control: mean over {n} seed(s); {teachers})")


# -- writing ---------------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:+.{digits}f}"


def comparison_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["comparison", "metric", "mean", "95% interval (t over seeds)", "item bootstrap", "seeds", "per seed"]
    rows = []
    for c in result["comparisons"]:
        d = c["digits"]
        ci = f"[{_fmt(c['ci'][0], d)}, {_fmt(c['ci'][1], d)}]" if c["ci"] else "one seed"
        boot = c.get("bootstrap_ci")
        rows.append([c["name"], f"{c['title']} ({c['unit']})", _fmt(c["mean"], d), ci,
                     f"[{_fmt(boot[0], d)}, {_fmt(boot[1], d)}]" if boot else "–", f"{c['holds']}/{c['n']}",
                     ", ".join(_fmt(v, d) for v in c["per_seed"].values())])
    return header, rows


def member_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per member: dev CE of the student, the control and the best teacher, then every headline
    column (registry.headline_columns) as 'student / control'."""
    columns = result.get("columns") or {"blimp": "BLiMP %"}  # sweep.json files written before "columns"
    header = ["member", "setting", "seed", "student dev CE", "control dev CE", "best teacher dev CE",
              *[f"{title.removesuffix(' %')} (student / control)" for title in columns.values()]]
    rows = []
    for r in result["members"]:
        ms = r["models"]
        s, c = ms.get(_by_role(ms, Role.STUDENT) or "", {}), ms.get(_by_role(ms, Role.CONTROL) or "", {})
        teachers = [v["dev_ce"] for v in ms.values() if v["role"] == Role.TEACHER.kind and v["dev_ce"] is not None]

        def num(x: float | None, pct: bool = False) -> str:
            return "–" if x is None else (f"{100 * x:.1f}" if pct else f"{x:.4f}")

        rows.append([r["name"], r["setting"], str(r["seed"]), num(s.get("dev_ce")), num(c.get("dev_ce")),
                     num(min(teachers) if teachers else None),
                     *[f"{num(s.get(k), True)} / {num(c.get(k), True)}" for k in columns]])
    return header, rows


def setting_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per setting: the teacher-control gap beside the distillation effect (does the effect follow the gap?)."""
    header = ["setting", "control - best teacher dev CE (> 0: the teachers know more)", "student - control dev CE",
              "95% interval", "seeds"]
    rows = []
    for r in result["settings"]:
        e = r["student_minus_control_dev_ce"]
        ci = f"[{_fmt(e['ci'][0], 3)}, {_fmt(e['ci'][1], 3)}]" if e and e["ci"] else "–"
        rows.append([r["setting"], _fmt(r["teacher_gap"], 4), _fmt(e and e["mean"], 3), ci,
                     f"{e['holds']}/{e['n']}" if e else "–"])
    return header, rows




def forest_plot(result: dict[str, Any]) -> bytes | None:
    """Each comparison as its mean with the t interval (and the item bootstrap), per-seed differences as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(c["metric"] for c in result["comparisons"]))
    if not metrics:
        return None
    rows = max(sum(c["metric"] == m for c in result["comparisons"]) for m in metrics)
    # One panel per row: side by side, three panels at 1280 px left ~7 px text; stacked, each is full width.
    fig, axes = plt.subplots(len(metrics), 1, figsize=(10, len(metrics) * (1.6 + 0.6 * rows)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        cs = [c for c in result["comparisons"] if c["metric"] == metric]
        for y, c in enumerate(cs):
            ax.scatter(list(c["per_seed"].values()), [y + 0.18] * c["n"], s=25, color="0.55", zorder=2)
            if c["ci"]:
                ax.plot(c["ci"], [y, y], color="C0", lw=2.5, zorder=3)
            if c.get("bootstrap_ci"):
                ax.plot(c["bootstrap_ci"], [y - 0.18] * 2, color="C1", lw=1.5, zorder=3)
            ax.scatter([c["mean"]], [y], color="C0", marker="D", s=50, zorder=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(cs)), [c["name"] for c in cs], fontsize=12)
        ax.tick_params(axis="x", labelsize=11)
        ax.set_ylim(len(cs) - 0.5, -0.5)
        title, unit, higher = cs[0]["title"], cs[0]["unit"], cs[0]["higher"]
        ax.set_title(f"{title}: A - B in {unit} ({'higher' if higher else 'lower'} is better for A)", fontsize=13)
        ax.grid(axis="x", alpha=0.3)
    fig.supxlabel("diamond: mean; blue: 95% t interval over seeds; orange: item bootstrap; grey dots: each seed",
                  fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write(base: Config, result: dict[str, Any]) -> list[Path]:
    out = sweep_dir(base)
    png = forest_plot(result)
    plot = out / "plots" / "forest.png"
    if png:
        atomic_write_bytes(plot, png)
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=2) + "\n")
    finished = f"{len(result['members'])} of {len(result['members']) + len(result['missing'])} members finished"
    md = [f"# babyllama sweep — `{out}`", "", f"Seeds {', '.join(map(str, result['seeds']))}; {finished}"
          + (f" (missing: {missing_members(result)})." if result["missing"] else "."), "", "## Verdict", ""]
    md += [f"- {v}" for v in result["verdict"] + result["conditions"]] + ["", "## What the intervals are conditional on", ""]
    md += [f"- {v}" for v in result.get("conditional_on", [])] + ["", "## Comparisons (A - B, paired by seed)", ""]
    md += [render.markdown_table(*comparison_rows(result)), ""] + ([f"![forest plot]({plot.relative_to(out)})", ""] if png else [])
    md += ["## Effect against the teacher-control gap", "", render.markdown_table(*setting_rows(result)), ""]
    md += ["## Members", "", render.markdown_table(*member_rows(result)), ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", _html(result, out, finished, png))
    return [out / "sweep.json", out / "report.md", out / "report.html"]


def missing_members(result: dict[str, Any]) -> str:
    """The members left out, each with why (unfinished, or a result that is not verified)."""
    why = result.get("missing_why") or {}
    return "; ".join(f"{n}: {why[n]}" if n in why else n for n in result["missing"])


def _html(result: dict[str, Any], out: Path, finished: str, png: bytes | None) -> str:
    parts = [render.page_head("babyllama sweep"), f"<h1>babyllama sweep — {html.escape(str(out))}</h1>",
             f"<p>Seeds {html.escape(', '.join(map(str, result['seeds'])))}; {html.escape(finished)}.</p>", "<h2>Verdict</h2>", render.html_list(result["verdict"] + result["conditions"]),
             "<h2>What the intervals are conditional on</h2>", render.html_list(result.get("conditional_on", [])),
             "<h2>Comparisons (A - B, paired by seed)</h2>", render.html_table(*comparison_rows(result))]
    if png:
        parts.append(render.html_image("forest plot", base64.b64encode(png).decode()))
    parts += ["<h2>Effect against the teacher-control gap</h2>", render.html_table(*setting_rows(result)),
              "<h2>Members</h2>", render.html_table(*member_rows(result)), "</body></html>"]
    return "\n".join(parts)
