"""The report is rebuilt from files on disk and states the comparison with its sign."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from babyllama.cli import main
from babyllama.config import Config, save_resolved
from babyllama.report import build_report, summarize
from conftest import write_verified_result

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _with_blimp(cfg: Config) -> Config:
    """The tiny config scoring a BLiMP fixture, so the report reads blimp.json."""
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"blimp": str(FIXTURES / "blimp_original")})})


def _fake_model(cfg: Config, name: str, n_params: int, dev_ce: float, blimp: float, with_kd: bool = False,
                items: dict[str, str] | None = None, windows: bool = True) -> None:
    d = cfg.model_dir(name)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    save_file({"w": np.zeros((n_params,), dtype=np.float32)}, str(d / "model.safetensors"))
    rows = []
    for step in range(1, 6):
        row = {"step": step, "loss": 5.0 - step * 0.2, "tokens_seen": step * 64, "words_seen": step * 50}
        if with_kd:
            row.update(ce=4.0 - step * 0.1, kd=1.0 / step)
        rows.append(row)
    rows.append({"step": 5, "tokens_seen": 320, "dev_loss": dev_ce})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    noise = np.random.default_rng(0).normal(0, 0.05, 40)  # the same windows for every model: paired
    ppl = {"ce_nats_per_token": dev_ce, "perplexity": float(np.exp(dev_ce)), "bits_per_word": 1.0,
           "windows": 40, "seq_len": 8, "tokens_scored": 280}
    if windows:
        ppl["window_ce"] = list(dev_ce + noise - noise.mean())
    write_verified_result(cfg, name, "perplexity.json", ppl)
    write_verified_result(cfg, name, "blimp.json", {
        "phenomena": {"anaphor_agreement": {"accuracy": blimp, "n": 10, "ties": 0},
                      "island_effects": {"accuracy": blimp - 0.1, "n": 10, "ties": 1}},
        "paradigms": {}, "fields": {}, "macro_paradigms": blimp, "macro_phenomena": blimp - 0.05,
        "data": "embedded:blimp", "n_pairs": 20, "aggregation": "phenomena", **({"items": items} if items else {})})


def test_report_states_losses_plainly(tiny_cfg: Config) -> None:
    tiny_cfg = _with_blimp(tiny_cfg)
    save_resolved(tiny_cfg)
    _fake_model(tiny_cfg, "t-llama", 1000, 3.0, 0.70)
    _fake_model(tiny_cfg, "t-gpt2", 900, 3.1, 0.68)
    _fake_model(tiny_cfg, "student", 100, 3.3, 0.60, with_kd=True)
    _fake_model(tiny_cfg, tiny_cfg.control_name, 100, 3.2, 0.65)

    paths = build_report(tiny_cfg.out)
    md = paths[0].read_text()
    assert ("Dev CE vs control `student-control`: the distilled student did NOT beat it, "
            "student - control = +0.1000 nats/token [+0.1000, +0.1000]") in md
    assert "paired over 40 dev windows" in md
    assert "Dev CE vs teacher `t-llama`: the distilled student did NOT beat it" in md
    # no item records: the BLiMP difference is given with its sign, and said to be untested
    assert "BLiMP (embedded subset, 20 pairs) vs teacher `t-llama`: the student is behind, untested" in md
    assert "BLiMP: embedded BLiMP subset (first 100 pairs of each paradigm), 20 pairs; headline = mean over phenomena." in md
    assert "Condition: the best teacher is 0.2000 nats/token below the control" in md
    assert "| t-llama | teacher | 1,000 | 320 | 250 | 3.0000 |" in md
    html = paths[1].read_text()
    assert html.count("data:image/png;base64,") == 4
    for name in ("loss_curves", "student_vs_control", "distill_parts", "blimp_phenomena"):
        assert (tiny_cfg.out / "plots" / f"{name}.png").stat().st_size > 1000
    summary = json.loads((tiny_cfg.out / "summary.json").read_text())
    assert "window_ce" not in json.dumps(summary) and summary["stages"]["report"] > 0

    # Fixed costs (#24): a figure is drawn again only when what it shows changed or its PNG did.
    plots = tiny_cfg.out / "plots"

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in plots.glob("*.png")}

    drawn = stamps()
    build_report(tiny_cfg.out)
    assert stamps() == drawn and (tiny_cfg.out / "report.html").read_text().count("data:image/png;base64,") == 4
    (plots / "loss_curves.png").write_bytes(b"not the figure")
    build_report(tiny_cfg.out)
    assert (plots / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
    assert {k: v for k, v in stamps().items() if k != "loss_curves.png"} == {
        k: v for k, v in drawn.items() if k != "loss_curves.png"}
    write_verified_result(tiny_cfg, tiny_cfg.control_name, "perplexity.json", {
        "ce_nats_per_token": 3.25, "perplexity": float(np.exp(3.25)), "bits_per_word": 1.0, "windows": 40,
        "seq_len": 8, "tokens_scored": 280})
    build_report(tiny_cfg.out)
    assert stamps()["student_vs_control.png"] != drawn["student_vs_control.png"]


def test_a_difference_inside_the_item_interval_reads_no_detectable_difference(tiny_cfg: Config) -> None:
    tiny_cfg.eval.blimp = "embedded:blimp"  # the registry reads the BLiMP results the config asks for
    save_resolved(tiny_cfg)
    rng = np.random.default_rng(1)
    a = {g: "".join(rng.choice(["0", "1"], 200)) for g in ("anaphor_agreement", "island_effects")}
    b = {g: v[:-3] + ("1" if v[-3] == "0" else "0") + v[-2:] for g, v in a.items()}  # one pair flipped per group
    _fake_model(tiny_cfg, "t-llama", 1000, 3.0, 0.70, items=a)
    _fake_model(tiny_cfg, "student", 100, 3.2, 0.61, with_kd=True, items=a)
    _fake_model(tiny_cfg, tiny_cfg.control_name, 100, 3.2, 0.60, items=b, windows=False)
    lines = summarize(tiny_cfg.out)["verdict"]
    blimp = next(v for v in lines if v.startswith("BLiMP") and "control" in v)
    assert "no detectable difference (the interval spans 0)" in blimp
    assert "0 pairs right for the student only, 2 for the control only" in blimp
    # the control has no per-window record: its dev CE difference is shown, untested
    dev = next(v for v in lines if v.startswith("Dev CE") and "control" in v)
    assert "untested" in dev and "+0.0000 nats/token" in dev


def test_report_when_student_wins_and_condition_unmet(tiny_cfg: Config) -> None:
    tiny_cfg = _with_blimp(tiny_cfg)
    save_resolved(tiny_cfg)
    _fake_model(tiny_cfg, "t-llama", 1000, 3.5, 0.70)
    _fake_model(tiny_cfg, "student", 100, 3.2, 0.75, with_kd=True)
    _fake_model(tiny_cfg, tiny_cfg.control_name, 100, 3.4, 0.65)
    verdict = summarize(tiny_cfg.out)["verdict"]
    assert any("control" in v and "the distilled student beat it" in v and "−0.2000" not in v and "-0.2000" in v
               for v in verdict)
    assert any(v.startswith("Condition NOT met") for v in verdict)
    # a missing teacher is shown as such, not silently dropped from the table
    assert "t-gpt2" in build_report(tiny_cfg.out)[0].read_text()


def test_report_cli_on_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a babyllama out_dir" in capsys.readouterr().err


def test_report_marks_a_task_at_chance_only_when_every_model_is(tiny_cfg: Config) -> None:
    from babyllama.report import chance_lines

    cfg = tiny_cfg.model_copy(update={"eval": tiny_cfg.eval.model_copy(update={"blimp": "embedded:blimp",
                                                                               "ewok": "somewhere"})})
    near = [{"headlines": {"blimp": 0.53, "ewok": 0.49}, "n_items": {"blimp": 200, "ewok": 400}},
            {"headlines": {"blimp": 0.47, "ewok": 0.51}, "n_items": {"blimp": 200, "ewok": 400}}]
    lines = chance_lines(cfg, near)
    assert len(lines) == 2 and lines[0].startswith("BLiMP: at chance") and "±6.9 points" in lines[0]
    assert lines[1].startswith("EWoK: at chance")
    apart = [dict(near[0]), {"headlines": {"blimp": 0.70, "ewok": 0.50}, "n_items": {"blimp": 200, "ewok": 400}}]
    assert [line.split(":")[0] for line in chance_lines(cfg, apart)] == ["EWoK"]  # one model clearly above chance
