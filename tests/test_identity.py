"""The identities that decide "is this done?": what enters them, what does not, and how changes are named."""

from __future__ import annotations

import json

import pytest

from babyllama import identity
from babyllama.errors import UserError
from babyllama.pipeline import Skip, plan
from babyllama.train.objective import LMObjective
from helpers import variant

LM = LMObjective().fingerprint()


def test_training_identity_follows_the_weights_not_the_logging(prepared_cfg, tmp_path):
    cfg = prepared_cfg
    base = identity.training_identity(cfg, cfg.model("t-llama"), LM)
    assert identity.training_identity(cfg, cfg.model("t-gpt2"), LM) != base
    quiet = variant(cfg, tmp_path / "quiet", log_every=5, save_every=3)
    assert identity.training_identity(quiet, quiet.model("t-llama"), LM) == base
    for changes in ({"lr": 1e-3}, {"schedule": "wsd"}, {"min_lr_ratio": 0.1}, {"windows": "fixed"}):
        other = variant(cfg, tmp_path / next(iter(changes)), **changes)
        assert identity.training_identity(other, other.model("t-llama"), LM) != base, changes
    assert identity.training_identity(cfg, cfg.model("t-llama"), LM, windows="fixed") != base


def test_keys_added_later_stay_out_of_the_identity_at_their_old_value(prepared_cfg):
    components = identity.training_components(prepared_cfg, prepared_cfg.model("t-llama"), LM)
    assert not set(identity.ADDED_KEYS) & {k.removeprefix("train.") for k in components}
    wsd = prepared_cfg.model("t-llama").model_copy(deep=True)
    wsd.train.schedule = "wsd"
    changed = identity.training_components(prepared_cfg, wsd, LM)
    assert identity.describe_changes(components, changed) == "train.schedule: '<unset>' -> 'wsd'"


def test_data_identity_is_the_manifest_hash_and_names_a_missing_one(prepared_cfg):
    manifest_path = prepared_cfg.data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert identity.data_identity(prepared_cfg.data_dir) == manifest["data_hash"]
    del manifest["data_hash"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="no data_hash"):
        identity.data_identity(prepared_cfg.data_dir)


def test_the_pipeline_uses_these_identities_and_says_how_each_stage_is_skipped(prepared_cfg):
    cfg = prepared_cfg
    stages = {s.name: s for s in plan(cfg)}
    assert stages["prepare"].fingerprint() == identity.data_identity(cfg.data_dir)
    assert stages["teacher:t-llama"].fingerprint() == identity.training_identity(cfg, cfg.model("t-llama"), LM)
    assert stages["control"].fingerprint() == identity.training_identity(cfg, cfg.model("control"), LM,
                                                                         cfg.student_windows)
    assert {n: s.skip for n, s in stages.items() if s.skip is not Skip.UNCHANGED} == {
        "prepare": Skip.BY_ITSELF, "evaluate": Skip.UNCHANGED_KEEP_OUTPUTS, "report": Skip.NEVER}
