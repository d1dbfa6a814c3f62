"""The names the BabyLM 2025/2026 pipelines give things: results paths, checkpoint names, the schedule.

One place for the layout export/submission.py writes and export/submission_check.py checks (read from the
official ``collate_preds.py`` and ``eval_zero_shot_fast_all_revisions.sh``).
"""

from __future__ import annotations

from babyllama.config import STRICT_SMALL_BUDGET, babylm_checkpoint_words

BACKEND = "causal"
MANIFEST = "submission.json"
#: our task -> (collated key, results sub-path of the full set, of the fast set or None)
ZERO_SHOT = {
    "blimp": ("blimp", "blimp/blimp_filtered", "blimp/blimp_fast"),
    "supplement": ("blimp_supplement", "blimp/supplement_filtered", "blimp/supplement_fast"),
    "ewok": ("ewok", "ewok/ewok_filtered", "ewok/ewok_fast"),
    "entity_tracking": ("entity_tracking", "entity_tracking/entity_tracking", "entity_tracking/entity_tracking_fast"),
    "comps": ("comps", "comps/comps", None),
}
#: Official tasks babyllama does not score; the card and the check list them as not included.
NOT_SCORED = ("wug_adj", "wug_past", "reading", "aoa")


def revision_name(words: float) -> str | None:
    """``chck_<N>M`` for a whole number of millions of words, else None (not an official checkpoint)."""
    return f"chck_{int(words) // 1_000_000}M" if words >= 1_000_000 and int(words) % 1_000_000 == 0 else None


def track(word_budget: int) -> str:
    return "strict-small" if word_budget <= STRICT_SMALL_BUDGET else "strict"


def required_revisions(word_budget: int, words_seen: float) -> list[str]:
    """The checkpoints the rules ask for: the track's schedule up to the words the model saw."""
    return [revision_name(w) or "" for w in babylm_checkpoint_words(word_budget) if w <= words_seen * (1 + 1e-9)]
