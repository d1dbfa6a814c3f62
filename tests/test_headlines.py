"""One number, one reader: under every protocol the sweep, the report and the model card show the same
BLiMP headline (the evaluation registry's), and every other zero-shot task's column (supplement, EWoK,
entity tracking, COMPS, GlobalPIQA, reading, WUG) reaches all three, except where the protocol dropped it."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import yaml

from babyllama.cli import main
from babyllama.evaluate.reading import NUMERIC, TEXT
from babyllama.export.card import render_card
from babyllama.export.record import load_record
from babyllama.protocols import PROTOCOLS
from babyllama.report import summarize

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
ZERO_SHOT = {"ewok": "EWoK", "entity_tracking": "entity tracking", "comps": "COMPS", "global_piqa": "GlobalPIQA",
             "supplement": "supplement", "reading": "reading ΔR²", "wug_adj": "WUG adj ρ", "wug_past": "WUG past ρ"}
CARD_LABELS = {"supplement": "BLiMP supplement"}  # the card names the minimal-pair sets in full (registry title)
DROPPED = {"babylm-2026": ("wug_adj", "wug_past")}  # the official 2026 code no longer scores them


def _reading_csv(path: Path) -> str:
    """A small reading_data.csv in the official columns (random times: only the plumbing is tested here)."""
    r = random.Random(0)
    words = "the cat sat on the mat and the dog ran to the door of the old red house by the sea".split()
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*TEXT, *NUMERIC])
        w.writeheader()
        for i in range(2, len(words)):  # short contexts: the tiny models have few positions
            w.writerow({"item": " ".join(words[i - 2:i]), "word": " " + words[i], "prev_item": words[i - 2],
                        "prev_word": " " + words[i - 1], **{k: 200 + 50 * r.random() for k in NUMERIC},
                        "length": len(words[i]), "context_length": i, "prev_length": len(words[i - 1])})
    return str(path)


def test_sweep_report_and_card_share_every_headline_under_each_protocol(tmp_path: Path, tiny_cfg) -> None:
    tree = tiny_cfg.model_dump(mode="json")
    # 2 paradigms in one phenomenon, so the two macros differ; no other eval key: each protocol sets them
    evals = {"blimp": str(FIXTURES / "blimp_agg"), **{t: str(FIXTURES / t) for t in list(ZERO_SHOT)[:5]},
             "wug_adj": str(FIXTURES / "wug_adj_nominalization"), "wug_past": str(FIXTURES / "wug_past_tense"),
             "reading": _reading_csv(tmp_path / "reading_data.csv")}
    member = tiny_cfg.out / "sweep" / "default-s7"
    for protocol in PROTOCOLS:  # the models are trained once; each protocol only evaluates again
        tree["eval"] = {"protocol": protocol, **evals}
        path = tmp_path / f"{protocol}.yaml"
        path.write_text(yaml.safe_dump(tree))
        assert main(["sweep", str(path), "--seeds", "1"]) == 0

        result = json.loads((tiny_cfg.out / "sweep" / "sweep.json").read_text())
        swept = {v["role"]: v for v in result["members"][0]["models"].values()}["student"]
        reported = next(m for m in summarize(member)["models"] if m["name"] == "student")
        rec = load_record(member / "models" / "student")
        card = render_card(rec, license_="mit", language="en")
        scored = json.loads((member / "eval" / "student" / "blimp.json").read_text())

        aggregation = PROTOCOLS[protocol]["eval"]["aggregation"]
        assert scored["aggregation"] == aggregation
        assert swept["blimp"] == reported["scores"]["BLiMP %"] == rec.headlines["blimp"] == scored["headline"]
        assert scored["headline"] == scored[f"macro_{aggregation}"]
        assert f"**BLiMP** {100 * scored['headline']:.1f}%, the macro accuracy over {aggregation}" in card
        sweep_md = (tiny_cfg.out / "sweep" / "report.md").read_text()
        # one wording of the teacher-gap condition (render.teacher_gap_sentence), one seed: the same number
        (in_report,) = [v for v in summarize(member)["verdict"] if v.startswith("Condition")]
        (in_sweep,) = [v for v in result["conditions"] if v.startswith("Condition")]
        head = in_report.split("control")[0]
        assert in_sweep.startswith(head) and "(control: mean over 1 seed(s)" in in_sweep and head in sweep_md
        for key, label in ZERO_SHOT.items():
            if key in DROPPED.get(protocol, ()):
                assert key not in swept and f"{label} %" not in reported["scores"] and key not in rec.headlines
                assert f"**{label}**" not in card and label not in sweep_md
                continue
            assert swept[key] == reported["scores"][f"{label} %"] == rec.headlines[key] is not None
            assert f"**{CARD_LABELS.get(key, label)}** {100 * rec.headlines[key]:.1f}" in card
            if key.startswith("wug"):  # the card says what the headline measures (registry.Evaluator.measure)
                assert "headline Spearman correlation with human ratios (x100" in card
            assert any(c["metric"] == key for c in result["comparisons"])
            assert f"{label} (student / control)" in sweep_md
