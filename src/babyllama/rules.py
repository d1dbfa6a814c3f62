"""The BabyLM 2026 rules a run can be checked against (``data.rules``), as plain facts and verdicts.

Facts (docs/babylm-2026.md; read the challenge's pages before relying on any): Strict-Small's word pool
is 10M words and Strict's 100M; a model may see at most 10 epochs of its pool's size (100M words in
Strict-Small); approved external teachers are any LM under 1B parameters, Llama 3.1-8B / 3.2-3B / 3.2-1B
Instruct and Qwen 2.5 / 3 / 3.5 up to 9B; checkpoints are published at 1M, 2M ... 9M, then 10M, 20M ...
100M words seen (Strict scaled by ten). Whether a teacher's epochs count toward the cap is not stated,
so both readings are checked. Nothing here reads files: ``ledger.py`` gathers the facts.

Every rule ends in one line whose verdict is "within", "exceeds by ..." or "cannot tell: ...".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

RULE_POOLS = {"babylm-2026-strict-small": 10_000_000, "babylm-2026-strict": 100_000_000}
#: Passes over the pool's size a model may see.
EPOCH_CAP = 10
#: Parameters below which any language model is an approved teacher.
SMALL_TEACHER = 1_000_000_000
#: The approved larger Llama teachers by the shape their config.json shows: (hidden_size, layers, vocab).
#: config.json does not say "Instruct"; the base model of the same shape cannot be told apart.
APPROVED_LLAMA = {(4096, 32, 128256): "Llama 3.1-8B", (3072, 28, 128256): "Llama 3.2-3B",
                  (2048, 16, 128256): "Llama 3.2-1B"}
#: Qwen 2.5 / 3 / 3.5 by model_type prefix (Qwen2 and Qwen2.5 share "qwen2"), up to this size.
QWEN_TYPES = ("qwen2", "qwen3")
QWEN_MAX = 9_500_000_000  # "up to 9B": the 9B models' own count is a little over 9e9


@dataclass
class ModelFacts:
    """What the ledger knows of one model; None where it cannot know."""

    name: str
    role: str  # roles.Role.short: "teacher", "external teacher", "student", "control" (no import: config imports this)
    pool_words: int | None = None  # words in the pool it trained on (None for an external teacher)
    words_seen: float | None = None  # with repetition
    planned: bool = False  # words_seen is the config's plan, not a finished run's count
    parameters: int | None = None
    model_type: str | None = None  # external teachers: config.json's model_type
    shape: tuple[int | None, int | None, int | None] | None = None  # (hidden_size, layers, vocab)
    save_at_words: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> float | None:
        if self.words_seen is None or not self.pool_words:
            return None
        return self.words_seen / self.pool_words


@dataclass(frozen=True)
class Verdict:
    rule: str
    verdict: str  # "within", "exceeds by ...", "cannot tell: ..."
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == "within"

    @property
    def broken(self) -> bool:
        return self.verdict.startswith("exceeds")

    def line(self) -> str:
        return f"{self.rule}: {self.verdict}" + (f" ({self.detail})" if self.detail else "")


def _words(n: float) -> str:
    return f"{n:,.0f} words"


def _over(value: float, limit: float, what: str) -> str:
    return "within" if value <= limit else f"exceeds by {_words(value - limit)} ({what})"


def required_checkpoints(pool: int, words_seen: float) -> list[int]:
    """The word counts at which a model that saw ``words_seen`` words must publish a checkpoint."""
    marks = [pool * k // 100 for k in range(10, 100, 10)] + [pool * k // 10 for k in range(10, 110, 10)]
    return [m for m in marks if m <= words_seen]


def check_pool(pool_words: int | None, budget: int) -> Verdict:
    if pool_words is None:
        return Verdict("word pool", "cannot tell: the data is not prepared yet")
    return Verdict("word pool", _over(pool_words, budget, f"{_words(pool_words)} in the training pool"),
                   f"{_words(pool_words)} of {_words(budget)}")


def check_epochs(student: ModelFacts | None, teachers: Sequence[ModelFacts], budget: int) -> list[Verdict]:
    """The exposure cap, read twice: the student's own words seen, then with its teachers' added."""
    cap = EPOCH_CAP * budget
    if student is None or student.words_seen is None:
        why = "cannot tell: the student has not been trained"
        return [Verdict("10-epoch cap (student)", why), Verdict("10-epoch cap (student + teachers)", why)]
    plan = " (planned)" if student.planned else ""
    own = Verdict("10-epoch cap (student)", _over(student.words_seen, cap, "student" + plan),
                  f"{_words(student.words_seen)}{plan} of {_words(cap)}")
    unknown = [t.name for t in teachers if t.role == "teacher" and t.words_seen is None]
    if unknown:
        return [own, Verdict("10-epoch cap (student + teachers)",
                             f"cannot tell: teacher {', '.join(unknown)} has no record of its words seen")]
    total = student.words_seen + sum(t.words_seen or 0 for t in teachers if t.role == "teacher")
    external = [t.name for t in teachers if t.role == "external teacher"]
    note = f"; external teacher(s) {', '.join(external)} not counted: their own training is outside the pool" \
        if external else ""
    planned = student.planned or any(t.planned for t in teachers)
    both = Verdict("10-epoch cap (student + teachers)", _over(total, cap, "student and teachers" + (" (planned)" if planned else "")),
                   f"{_words(total)} of {_words(cap)}{note}")
    return [own, both]


def approved_teacher(t: ModelFacts) -> tuple[bool | None, str]:
    """(approved?, why) for an external teacher, from its config.json's model_type, shape and size."""
    if t.parameters is None:
        return None, f"{t.name}: its parameter count is not known"
    size = f"{t.parameters / 1e6:,.0f}M parameters"
    if t.parameters < SMALL_TEACHER:
        return True, f"{t.name}: {size}, under 1B"
    kind = (t.model_type or "").lower()
    if kind == "llama" and t.shape in APPROVED_LLAMA:
        return True, f"{t.name}: the shape of {APPROVED_LLAMA[t.shape]} (approved as Instruct; config.json does not tell)"
    if kind.startswith(QWEN_TYPES) and t.parameters <= QWEN_MAX:
        return True, f"{t.name}: {kind}, {size} (Qwen 2.5/3/3.5 up to 9B)"
    return False, f"{t.name}: {kind or 'unknown type'}, {size}: not under 1B and not an approved Llama/Qwen"


def check_teachers(teachers: Sequence[ModelFacts]) -> Verdict:
    external = [t for t in teachers if t.role == "external teacher"]
    if not external:
        return Verdict("approved external teachers", "within", "no external teacher (teachers trained here, on the pool)")
    answers = [approved_teacher(t) for t in external]
    bad = [why for ok, why in answers if ok is False]
    if bad:
        return Verdict("approved external teachers", f"exceeds by {len(bad)} teacher(s)", "; ".join(bad))
    unknown = [why for ok, why in answers if ok is None]
    if unknown:
        return Verdict("approved external teachers", f"cannot tell: {'; '.join(unknown)}")
    return Verdict("approved external teachers", "within",
                   "; ".join(why for _, why in answers) + "; whether their output distributions may be distilled is "
                   "not settled by the 2026 rules")


def check_checkpoints(student: ModelFacts | None, budget: int) -> Verdict:
    if student is None or student.words_seen is None:
        return Verdict("required checkpoints", "cannot tell: the student has not been trained")
    need = required_checkpoints(budget, student.words_seen)
    have = {round(w) for w in student.save_at_words}
    missing = [m for m in need if m not in have]
    if missing:
        shown = ", ".join(f"{m / 1e6:g}M" for m in missing[:6]) + (" ..." if len(missing) > 6 else "")
        return Verdict("required checkpoints", f"exceeds by {len(missing)} missing checkpoint(s)",
                       f"student.train.save_at_words lacks {shown}")
    return Verdict("required checkpoints", "within", f"{len(need)} checkpoint(s) up to {_words(student.words_seen)}")


def check(rules: str, budget: int, pool_words: int | None, models: Sequence[ModelFacts]) -> list[Verdict]:
    """Every rule of ``rules`` (data.rules) against the facts; [] for 'none'."""
    if rules == "none":
        return []
    student = next((m for m in models if m.role == "student"), None)
    teachers = [m for m in models if m.role in ("teacher", "external teacher")]
    return [check_pool(pool_words, budget), *check_epochs(student, teachers, budget), check_teachers(teachers),
            check_checkpoints(student, budget)]
