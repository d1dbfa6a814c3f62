"""BLiMP-style minimal pairs: does the model give the acceptable sentence the higher log-probability?

Data (auto-detected, a folder of files or one file):

- original BLiMP, ``<UID>.jsonl``: sentence_good, sentence_bad, UID, linguistics_term, field, pairID;
- BabyLM 2024 ``blimp_filtered``: the same fields, with the id called ``pair_id``;
- BabyLM 2024 ``supplement_filtered``: sentence_good / sentence_bad plus context fields we ignore
  (sentences may span several lines, e.g. turn-taking dialogues);
- BabyLM 2023 filtered, ``<phenomenon>.json``: one file per phenomenon, rows with sentence_good /
  sentence_bad; grouped by file whatever the rows say (the 2023 code scores one task per file);
- ``embedded:blimp``: the first 100 pairs of each original paradigm, shipped in the package
  (evaluate/data/README.md). Files may be gzipped (``.jsonl.gz``).

A row without UID / linguistics_term is grouped under its file's stem; a row without ``field``
counts in no field.

Scoring. A sentence's score is the sum (or mean) of the log-probabilities of its tokens, each
conditioned on everything before it and on one prefix token:

- ``prefix="eos"`` (default): one ``</s>``, the BabyLM 2023 pipeline's stand-in for BOS; it is also
  our training separator (every line is followed by ``</s>``), so for our models it is a sentence start;
- ``prefix="bos"``: the tokenizer's BOS token;
- ``prefix="none"``: no prefix, so the first token is conditioned on nothing and left unscored;
- ``prefix="tokenizer"``: the tokenizer's own special tokens, as the BabyLM 2025/2026 pipelines tokenize
  (``official_inputs``; the same as ``none`` for a tokenizer that adds none, such as ours).

``leading_space`` prepends " " to each sentence before tokenizing, as the 2023/2024 pipelines do (their
target separator). Inputs longer than the model's positions are truncated from the left when
``truncate`` is on (lm-eval's practice); the 2025/2026 pipelines never truncate, and the result's
``notes`` say what happened to a longer input (``length_note``). A pair is correct when
score(good) > score(bad); equal scores (and NaN, read as minus infinity) are settled by ``ties``
(evaluate/decide.py: correct, wrong, seeded random, or expected credit).

Sentences are scored in batches sorted by length, right-padded, with an attention mask and explicit
position ids, so a sentence's score does not depend on what it is batched with. For babyllama's two
architectures (LLaMA, GPT-2) both sentences of a pair share one row, their common beginning computed
once, and only the rows that predict a scored token go through the output layer (evaluate/packed.py):
every sentence is still scored whole, and each pair gets the same decision as one sentence per row
(tests/test_eval_packed.py; README, "Benchmarks"). The pairs are read and tokenized once for all models.

Result JSON (what ``babyllama evaluate blimp --out`` writes; the report stage reads it)::

    {"model": str, "data": str,
     "protocol": {"prefix": "eos"|"bos"|"none"|"tokenizer", "prefix_token_id": int|null, "leading_space": bool,
                  "reduction": "sum"|"mean", "ties": "correct"|"wrong"|"random"|"expected", "seed": int,
                  "ties_correct": bool, "truncate": bool},   # ties_correct: ties == "correct" (older readers)
     "formats": [str, ...],              # detected data formats
     "notes": [str, ...],                # e.g. inputs longer than the model's positions, and what was done
     "paradigms": {UID: {"accuracy": float, "n": int, "ties": int}},
     "phenomena": {linguistics_term: {"accuracy": float, "n": int, "ties": int}},
     "fields": {field: {"accuracy": float, "n": int, "ties": int}},
     "macro_paradigms": float,           # unweighted mean over paradigms
     "macro_phenomena": float,           # unweighted mean over phenomena
     "aggregation": "phenomena"|"paradigms", "headline": float,   # the macro the protocol reports
     "accuracy": float,                  # pooled over all pairs
     "n_pairs": int, "ties": int,        # ties: pairs whose two scores are equal
     "by_ties": {rule: {"paradigms", "phenomena", "pooled": float}},   # the macros under every tie rule
     "headline_by_ties": {rule: float},  # the headline under every tie rule (random: seeded by "seed")
     "items": {linguistics_term: "0110..."},  # per pair, in data order: 1 = correct (paired bootstraps;
                                              # under random/expected the seeded draw decides a tie)
     "paradigm_items": {uid: "0110..."}}  # the same, grouped by paradigm (the babylm-2024/2025 headline groups)

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from babyllama import progress as progress_bars
from babyllama.errors import UserError
from babyllama.evaluate import packed
from babyllama.evaluate.chunked import encode_chunked
from babyllama.evaluate.decide import TIE_RULES, decide
from babyllama.evaluate.formats import (  # noqa: F401 (EMBEDDED, resolve_data: their home is formats)
    EMBEDDED,
    check_causal_lm_dir,
    load_causal_lm,
    max_positions,
    read_json_rows,
    resolve_data,
    special_token_id,
    text_field,
)
from babyllama.hf_logging import quiet_transformers
from babyllama.runtime import resolve_device


@dataclass(frozen=True)
class Pair:
    good: str
    bad: str
    paradigm: str
    phenomenon: str
    field: str | None


# -- data ----------------------------------------------------------------------------------------------


DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz")


def data_files(data: Path, what: str = "minimal pairs") -> list[Path]:
    """The .jsonl / .json / .jsonl.gz files of ``data`` (a file, or a folder's files in name order)."""
    if data.is_file():
        if not data.name.endswith(DATA_SUFFIXES):
            raise UserError(f"{data}: expected a .jsonl or .json file of {what}")
        return [data]
    if not data.is_dir():
        raise UserError(f"{data}: {what} data not found")
    files = sorted(p for p in data.iterdir() if p.name.endswith(DATA_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise UserError(f"{data}: no .jsonl or .json files of {what} in this folder")
    return files


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _detect_format(path: Path, row: dict[str, Any]) -> str:
    if path.suffix == ".json":
        return "babylm-2023-filtered"
    if "pairID" in row:
        return "blimp"
    if "pair_id" in row:
        return "babylm-2024-filtered"
    return "babylm-2024-supplement"


def _group(path: Path, loc: str, row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"{path}: {loc}: field {key!r} must be a non-empty string")
    return value


def load_pairs(data: str | Path) -> tuple[list[Pair], list[str]]:
    """Every minimal pair under ``data`` (folder or file) and the formats detected."""
    pairs: list[Pair] = []
    formats: set[str] = set()
    for path in data_files(resolve_data(data)):
        rows = read_json_rows(path)
        if not rows:
            raise UserError(f"{path}: no minimal pairs in this file")
        fmt = _detect_format(path, rows[0][1])
        formats.add(fmt)
        by_file = fmt == "babylm-2023-filtered"  # the 2023 code scores one task per file: its phenomenon
        for loc, row in rows:
            good = text_field(path, loc, row, "sentence_good")
            bad = text_field(path, loc, row, "sentence_bad")
            pairs.append(Pair(
                good=good,
                bad=bad,
                paradigm=_group(path, loc, row, "UID") or _stem(path),
                phenomenon=_stem(path) if by_file else _group(path, loc, row, "linguistics_term") or _stem(path),
                field=_group(path, loc, row, "field"),
            ))
    return pairs, sorted(formats)


# -- scoring -------------------------------------------------------------------------------------------

#: From this many texts on, `encode` tokenizes a byte-level BPE's distinct words rather than each text.
CHUNKED_FROM = 1000


def encode(tokenizer: Any, sentences: list[str], leading_space: bool) -> list[list[int]]:
    """Token ids of each sentence, without special tokens (the prefix is added by the scorer).

    A fast tokenizer encodes the whole batch in its Rust backend (the same ids as its ``__call__``,
    without building a BatchEncoding of 134,000 rows for the full BLiMP); from ``CHUNKED_FROM`` texts on,
    a byte-level BPE encodes each distinct word once (evaluate/chunked.py: the same ids)."""
    texts = [(" " + s) if leading_space else s for s in sentences]
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        if len(texts) >= CHUNKED_FROM and (ids := encode_chunked(backend, texts)) is not None:
            return ids
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _input(s: list[int], span: tuple[int, int] | None, prefix_id: int | None, cut_at: int | None) -> tuple[list[int], int, int]:
    """The model input of one sequence and the [first, stop) positions whose tokens are scored.

    Position 0 is never scored (nothing predicts it); ``cut_at`` keeps only the last that many tokens.
    """
    head = 0 if prefix_id is None else 1
    x = [prefix_id, *s] if head else s
    start, stop = span if span is not None else (0, len(s))
    first, stop = max(1, start + head), stop + head
    if cut_at and len(x) > cut_at:
        cut = len(x) - cut_at
        x, first, stop = x[cut:], max(1, first - cut), stop - cut
    return x, first, stop


def score_sequences(
    model: Any,
    seqs: list[list[int]],
    *,
    prefix_id: int | None,
    reduction: Literal["sum", "mean"] = "sum",
    batch_size: int = 64,
    progress: bool = False,
    scored: list[int] | None = None,
    spans: list[tuple[int, int]] | None = None,
    truncate: bool = True,
) -> list[float]:
    """Score of each token sequence: sum/mean of log p(token | prefix, earlier tokens).

    With ``prefix_id`` None the first token has no context and is not scored. ``scored[i]``, when
    given, limits sequence i's score to its last ``scored[i]`` tokens (a completion after a context);
    ``spans[i] = (start, stop)`` limits it to tokens start..stop-1 of the sequence instead. A sequence
    longer than the model's positions keeps its last tokens when ``truncate`` is on, or when the model
    cannot read past its positions (learned absolute positions); otherwise it is scored whole
    (`length_note` says which). Identical inputs are scored once. A sequence with nothing to score gets 0.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    cut_at = cut_length(model.config, truncate)
    if spans is None and scored is not None:
        spans = [(len(s) - n, len(s)) for s, n in zip(seqs, scored, strict=True)]
    # Identical inputs are scored once: `index[i]` is sequence i's place among the distinct inputs.
    slot: dict[tuple[Any, ...], int] = {}
    inputs: list[tuple[list[int], int, int]] = []
    index = []
    for i, s in enumerate(seqs):
        span = spans[i] if spans is not None else None
        key = (*s, span)
        j = slot.get(key)
        if j is None:
            j = slot[key] = len(inputs)
            inputs.append(_input(s, span, prefix_id, cut_at))
        index.append(j)
    scores = _score_inputs(model, inputs, reduction, batch_size, progress)
    return [scores[j] for j in index]


@torch.inference_mode()
def _score_inputs(model: Any, inputs: list[tuple[list[int], int, int]], reduction: str, batch_size: int,
                  progress: bool) -> list[float]:
    """The score of each (input ids, first, stop) in batches of ``batch_size`` sorted by length, longest first
    (the first batch is the biggest, so an out-of-memory error shows up at once); right-padded, with an
    attention mask and explicit positions, so an input's score does not depend on its batch mates."""
    device = next(model.parameters()).device
    order = sorted(range(len(inputs)), key=lambda j: len(inputs[j][0]), reverse=True)
    scores = [0.0] * len(inputs)  # a batch with nothing to predict (width < 2) keeps its zeros
    for start in progress_bars.iterate(range(0, len(order), batch_size), "scoring", "batch", enabled=progress):
        chunk = order[start : start + batch_size]
        rows = [inputs[j][0] for j in chunk]
        width = len(rows[0])
        if width < 2:
            continue
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
        positions = torch.arange(width, device=device).expand(len(rows), width)
        lengths = torch.tensor([len(r) for r in rows], device=device)
        mask = (positions < lengths[:, None]).long()
        # Target t (the token at position t + 1) counts when t + 1 lies in the row's [first, stop).
        first = torch.tensor([inputs[j][1] for j in chunk], device=device)
        stop = torch.tensor([inputs[j][2] for j in chunk], device=device)
        target = positions[0, 1:]
        counted = (target >= first[:, None]) & (target < stop[:, None])
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        weight = counted.to(token_logp.dtype)
        total = (token_logp * weight).sum(-1)
        if reduction == "mean":
            total = total / weight.sum(-1).clamp(min=1)
        for j, v in zip(chunk, total.tolist(), strict=True):
            scores[j] = v
    return scores


def cut_length(config: Any, truncate: bool) -> int | None:
    """How many last tokens an input keeps (None: all): the model's positions when ``truncate`` is on or the
    model cannot read past them."""
    return max_positions(config) if truncate or not reads_past_positions(config) else None


def reads_past_positions(config: Any) -> bool:
    """Whether the model can score inputs longer than its positions: rotary positions can, learned ones cannot."""
    return any(getattr(config, key, None) is not None for key in ("rope_theta", "rope_parameters", "rope_scaling"))


def length_note(config: Any, lengths: list[int], truncate: bool) -> str | None:
    """One line for the result when some inputs are longer than the model's positions, else None."""
    limit = max_positions(config)
    over = sum(n > limit for n in lengths) if limit else 0
    if not over:
        return None
    head = f"{over} of {len(lengths)} inputs are longer than the model's {limit} positions"
    if truncate:
        return f"{head}; each keeps its last {limit} tokens (eval.truncate)"
    if reads_past_positions(config):
        return f"{head}; scored whole, past the positions the model was trained on, as the official code does"
    return (f"{head}; the model has learned positions and cannot read past them, so each keeps its last {limit} tokens "
            "(the official code fails on these items)")


def prefix_token_id(tokenizer: Any, config: Any, prefix: str, model_dir: str | Path) -> int | None:
    """The token the scorer puts before every text: None for ``none`` and ``tokenizer`` (the tokenizer adds its own)."""
    if prefix in ("none", "tokenizer"):
        return None
    if prefix not in ("eos", "bos"):
        raise UserError(f"prefix must be eos, bos, none or tokenizer, got {prefix!r}")
    tid = special_token_id(tokenizer, config, prefix)
    if tid is None:
        raise UserError(f"{model_dir}: the tokenizer and config define no {prefix} token; use --prefix none or the other one")
    return int(tid)


def official_inputs(tokenizer: Any, texts: list[str], completions: list[str]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids and scored span of each text, built as the BabyLM 2025/2026 causal scorer builds them.

    The text is tokenized with the tokenizer's own special tokens (a ``<s>`` it adds is context; an
    end token it appends has an empty character span and is not scored). The scored tokens are those
    whose character span ends after the completion's first character (the completion is the text's
    tail; for a minimal pair it is the whole sentence), except the first token, which nothing predicts.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("prefix 'tokenizer' needs a fast tokenizer (tokenizer.json) to locate the scored tokens")
    with quiet_transformers():  # its "longer than the maximum length" warning: length_note says what happens
        enc = tokenizer(texts, return_offsets_mapping=True)
    ids, spans = [], []
    for text, completion, row, offsets in zip(texts, completions, enc["input_ids"], enc["offset_mapping"], strict=True):
        start = len(text) - len(completion) + (offsets[0][0] if offsets else 0)
        hit = [i for i, (_, end) in enumerate(offsets) if end > start and i > 0]
        ids.append(list(row))
        spans.append((hit[0], hit[-1] + 1) if hit else (0, 0))
    return ids, spans


# -- evaluation ----------------------------------------------------------------------------------------


def _stats(credit: float, n: int, ties: int) -> dict[str, Any]:
    return {"accuracy": credit / n if n else 0.0, "n": n, "ties": ties}


def _macro(stats: dict[str, dict[str, Any]]) -> float:
    accs = [s["accuracy"] for s in stats.values()]
    return sum(accs) / len(accs) if accs else 0.0


def aggregate(pairs: list[Pair], good: list[float], bad: list[float], ties: str = "wrong", seed: int = 0) -> dict[str, Any]:
    """Accuracies per paradigm, phenomenon and field, their macro means, pooled totals, and the headline
    macros under every tie rule (``by_ties``: {rule: {"paradigms": .., "phenomena": ..}})."""
    if ties not in TIE_RULES:
        raise UserError(f"ties must be one of {', '.join(TIE_RULES)}, got {ties!r}")
    d = decide([[g, b] for g, b in zip(good, bad, strict=True)], [0] * len(pairs), seed)
    by_ties: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {}
    for rule in TIE_RULES:
        groups: dict[str, dict[str, list[float]]] = {"paradigms": {}, "phenomena": {}, "fields": {}}
        for p, credit, tie in zip(pairs, d.credit[rule], d.tie, strict=True):
            for kind, name in (("paradigms", p.paradigm), ("phenomena", p.phenomenon), ("fields", p.field)):
                if name is not None:
                    c = groups[kind].setdefault(name, [0.0, 0, 0])
                    c[0], c[1], c[2] = c[0] + credit, c[1] + 1, c[2] + tie
        stats = {kind: {k: _stats(*v) for k, v in sorted(g.items())} for kind, g in groups.items()}
        by_ties[rule] = {"paradigms": _macro(stats["paradigms"]), "phenomena": _macro(stats["phenomena"]),
                         "pooled": sum(d.credit[rule]) / len(pairs) if pairs else 0.0}
        if rule == ties:
            out.update(stats)
    out["macro_paradigms"], out["macro_phenomena"] = by_ties[ties]["paradigms"], by_ties[ties]["phenomena"]
    out["accuracy"] = by_ties[ties]["pooled"]
    out["n_pairs"] = len(pairs)
    out["ties"] = sum(d.tie)
    # 0/1 per pair for paired bootstraps: under random and expected, the seeded draw decides a tie.
    decided = d.credit["random" if ties in ("random", "expected") else ties]
    items: dict[str, list[str]] = {}
    paradigm_items: dict[str, list[str]] = {}
    for p, credit in zip(pairs, decided, strict=True):
        items.setdefault(p.phenomenon, []).append("1" if credit else "0")
        if p.paradigm is not None:
            paradigm_items.setdefault(p.paradigm, []).append("1" if credit else "0")
    # grouped both ways: a paired test follows the headline's groups
    out["items"] = {k: "".join(v) for k, v in sorted(items.items())}
    out["paradigm_items"] = {k: "".join(v) for k, v in sorted(paradigm_items.items())}
    out["by_ties"] = by_ties
    return out


def _encode_pairs(tokenizer: Any, pairs: list[Pair], prefix: str, leading_space: bool) -> tuple[list[list[int]], list | None]:
    """Token ids (good sentences, then bad) and, for ``prefix='tokenizer'``, their scored spans."""
    sentences = [p.good for p in pairs] + [p.bad for p in pairs]
    if prefix != "tokenizer":
        return encode(tokenizer, sentences, leading_space), None
    texts = [(" " + s) if leading_space else s for s in sentences]
    return official_inputs(tokenizer, texts, texts)


def evaluate_blimp(model_dir: str | Path, data: str | Path, **settings: Any) -> dict[str, Any]:
    """Score every minimal pair under ``data`` with the causal LM in ``model_dir`` (schema above; the
    keywords are those of `evaluate_blimp_models`)."""
    return next(evaluate_blimp_models([model_dir], data, **settings))


def evaluate_blimp_models(
    model_dirs: list[str | Path],
    data: str | Path,
    *,
    prefix: Literal["eos", "bos", "none", "tokenizer"] = "eos",
    leading_space: bool = True,
    reduction: Literal["sum", "mean"] = "sum",
    ties: str = "wrong",
    seed: int = 0,
    aggregation: Literal["phenomena", "paradigms"] = "phenomena",
    truncate: bool = True,
    batch_size: int = 64,
    device: str | None = None,
) -> Iterator[dict[str, Any]]:
    """One result per model folder (schema above), in order, each as soon as it is scored: the pairs are read
    once, and the models that share a tokenizer share one tokenization of them (the full BLiMP is 134,000
    sentences). The settings are checked before anything is read."""
    if aggregation not in ("phenomena", "paradigms"):
        raise UserError(f"aggregation must be phenomena or paradigms, got {aggregation!r}")
    if reduction not in ("sum", "mean"):
        raise UserError(f"reduction must be sum or mean, got {reduction!r}")
    pairs, formats = load_pairs(data)
    return _score_models(model_dirs, data, pairs, formats, prefix=prefix, leading_space=leading_space,
                         reduction=reduction, ties=ties, seed=seed, aggregation=aggregation, truncate=truncate,
                         batch_size=batch_size, device=device)


def _score_models(model_dirs: list[str | Path], data: str | Path, pairs: list[Pair], formats: list[str], *,
                  device: str | None, **settings: Any) -> Iterator[dict[str, Any]]:
    """Each model's result in order, one model at a time with all torch threads (two models side by side, one
    thread each, measured slower: README, "Benchmarks")."""
    dev = resolve_device(device)
    for model_dir in model_dirs:  # a wrong folder named last fails before the first model is scored
        check_causal_lm_dir(model_dir)
    shared = _SharedInputs(pairs, settings["prefix"], settings["leading_space"], settings["batch_size"])
    label = progress_bars.context_label(f"{len(model_dirs)} model{'s' * (len(model_dirs) != 1)} blimp")
    bar = _LazyBar(len(model_dirs) * len(pairs), label)
    try:
        for model_dir in model_dirs:
            yield _score_model(model_dir, data, pairs, formats, dev, shared, bar.update, **settings)
    finally:
        bar.close()


class _LazyBar:
    """A progress bar over pairs that appears at its first update, after a model has loaded (so a model that
    fails to load leaves its error line alone)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self._bar = total, label, None

    def update(self, n: int) -> None:
        if self._bar is None:
            self._bar = progress_bars.bar(self.total, self.label, "pair")
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _SharedInputs:
    """The pairs' token ids and packed batches, computed once for all models that share a tokenizer (and prefix
    and length limit)."""

    def __init__(self, pairs: list[Pair], prefix: str, leading_space: bool, batch_size: int) -> None:
        self.pairs, self.prefix, self.leading_space, self.batch_size = pairs, prefix, leading_space, batch_size
        self._encoded: dict[str, tuple[list[list[int]], list | None]] = {}
        self._batches: dict[tuple[str, int | None, int | None], list[packed.Batch]] = {}

    def encoded(self, tokenizer: Any) -> tuple[list[list[int]], list | None]:
        key = _tokenizer_key(tokenizer)
        if key not in self._encoded:
            self._encoded[key] = _encode_pairs(tokenizer, self.pairs, self.prefix, self.leading_space)
        return self._encoded[key]

    def batches(self, tokenizer: Any, prefix_id: int | None, cut_at: int | None) -> list[packed.Batch]:
        seqs, spans = self.encoded(tokenizer)
        key = (_tokenizer_key(tokenizer), prefix_id, cut_at)
        if key not in self._batches:
            inputs = [_input(s, spans[i] if spans else None, prefix_id, cut_at) for i, s in enumerate(seqs)]
            n = len(self.pairs)
            # as many tokens per forward pass as batch_size sentences of 32 tokens
            self._batches[key] = packed.plan(inputs[:n], inputs[n:], tokens_per_batch=32 * self.batch_size)
        return self._batches[key]


def _score_model(model_dir: str | Path, data: str | Path, pairs: list[Pair], formats: list[str], dev: torch.device,
                 shared: _SharedInputs, done: Any, *, prefix: str, leading_space: bool,
                 reduction: Literal["sum", "mean"], ties: str, seed: int, aggregation: str, truncate: bool,
                 batch_size: int) -> dict[str, Any]:
    """One model's result: both sentences of a pair in one row where the model allows (`packed`), else one
    sentence per row."""
    model, tokenizer = load_causal_lm(model_dir, dev)
    pid = prefix_token_id(tokenizer, model.config, prefix, model_dir)
    seqs, spans = shared.encoded(tokenizer)
    n = len(pairs)
    if packed.packable(model):
        good, bad = packed.score_pairs(packed.fuse_gelu(model), shared.batches(tokenizer, pid, cut_length(model.config, truncate)),
                                       reduction, n, done)
    else:
        scores = score_sequences(model, seqs, prefix_id=pid, reduction=reduction, batch_size=batch_size,
                                 spans=spans, truncate=truncate)
        good, bad = scores[:n], scores[n:]
        done(n)
    note = length_note(model.config, [len(s) + (pid is not None) for s in seqs], truncate)
    result = {
        "model": str(model_dir),
        "data": str(data),
        "protocol": {"prefix": prefix, "prefix_token_id": pid, "leading_space": leading_space,
                     "reduction": reduction, "ties": ties, "seed": seed, "ties_correct": ties == "correct",
                     "truncate": truncate},
        "formats": formats,
        "notes": [note] if note else [],
    }
    result.update(aggregate(pairs, good, bad, ties, seed))
    result["aggregation"] = aggregation
    result["headline"] = result[f"macro_{aggregation}"]
    result["headline_by_ties"] = {rule: v[aggregation] for rule, v in result["by_ties"].items()}
    return result


def _tokenizer_key(tokenizer: Any) -> str:
    """Equal for tokenizers that encode every text alike: a fast tokenizer's whole definition (vocabulary,
    merges, normalizer), else the object's identity (a slow tokenizer shares with no other)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    return backend.to_str() if backend is not None else f"id:{id(tokenizer)}"


def format_blimp_table(result: dict[str, Any]) -> str:
    """Markdown: accuracy (%) per phenomenon, per field, and the macro means."""
    proto = result["protocol"]
    lines = [
        f"BLiMP: {result['model']} on {result['data']}",
        f"(prefix {proto.get('prefix', proto['prefix_token_id'])}, leading space {'on' if proto['leading_space'] else 'off'}, "
        f"{proto['reduction']} of log-probs, ties {tie_rule(proto)})",
        *result.get("notes", []),
        "",
    ]
    for kind, title in (("phenomena", "phenomenon"), ("fields", "field")):
        if not result.get(kind):
            continue
        lines += [f"| {title} | accuracy | pairs | ties |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {100 * s['accuracy']:.1f} | {s['n']} | {s['ties']} |" for name, s in result[kind].items()]
        lines.append("")
    lines += ["| macro | accuracy |", "|---|---:|",
              f"| over {len(result['paradigms'])} paradigms | {100 * result['macro_paradigms']:.1f} |",
              f"| over {len(result['phenomena'])} phenomena | {100 * result['macro_phenomena']:.1f} |"]
    if "accuracy" in result:
        lines.append(f"| all {result.get('n_pairs', '')} pairs pooled | {100 * result['accuracy']:.1f} |")
    if "headline" in result:
        lines.append(f"| **headline** (mean over {result['aggregation']}) | {100 * result['headline']:.1f} |")
    lines += tie_lines(result)
    return "\n".join(lines)


def tie_rule(proto: dict[str, Any]) -> str:
    """How a result settled ties, from its protocol block (results written before eval.ties say ties_correct)."""
    rule = proto.get("ties") or ("correct" if proto.get("ties_correct") else "wrong")
    return f"{rule}, seed {proto.get('seed', 0)}" if rule == "random" else rule


def tie_lines(result: dict[str, Any]) -> list[str]:
    """Table rows: the headline under the seeded draw and under expected credit, when any item tied."""
    by = result.get("headline_by_ties")
    if not by or not result.get("ties"):
        return []
    return [f"| headline, ties by seeded draw / expected credit ({result['ties']} ties) | "
            f"{100 * by['random']:.1f} / {100 * by['expected']:.1f} |"]
