"""One number, one reader: under every protocol the sweep, the report and the model card show the same
BLiMP headline (the evaluation registry's), and EWoK, entity tracking and COMPS reach the sweep and the card."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from babyllama.cli import main
from babyllama.export.card import render_card
from babyllama.export.record import load_record
from babyllama.protocols import PROTOCOLS
from babyllama.report import summarize

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
ZERO_SHOT = {"ewok": "EWoK", "entity_tracking": "entity tracking", "comps": "COMPS"}


def test_sweep_report_and_card_share_every_headline_under_each_protocol(tmp_path: Path, tiny_cfg) -> None:
    tree = tiny_cfg.model_dump(mode="json")
    # 2 paradigms in one phenomenon, so the two macros differ; no other eval key: each protocol sets them
    evals = {"blimp": str(FIXTURES / "blimp_agg"), **{task: str(FIXTURES / task) for task in ZERO_SHOT}}
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
        for key, label in ZERO_SHOT.items():
            assert swept[key] == reported["scores"][f"{label} %"] == rec.headlines[key] is not None
            assert f"**{label}** {100 * rec.headlines[key]:.1f}%" in card
            assert any(c["metric"] == key for c in result["comparisons"])
