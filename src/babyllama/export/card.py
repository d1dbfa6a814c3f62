"""The model card: a Hugging Face README.md (YAML front matter + prose) built only from the run's records.

Every number on the card is read from a file the run wrote (see record.py); a section whose record is
missing says so instead of guessing. The front matter follows the Hub's model-card layout, with the
metrics in ``model-index`` carrying their protocol in ``args``.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from safetensors import safe_open

import babyllama
from babyllama.evaluate.registry import is_embedded, pair_tasks, pairs_dataset
from babyllama.export.record import ModelRecord
from babyllama.roles import Role

ARCH_NAMES = {"llama": "LLaMA", "gpt2": "GPT-2"}


def parameter_count(rec: ModelRecord) -> int:
    """Parameters as trained (training_summary), else counted from the safetensors headers."""
    if rec.training and rec.training.get("params"):
        return int(rec.training["params"])
    total = 0
    for f in rec.weight_files:
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _datasets(rec: ModelRecord) -> list[str]:
    data = (rec.run_config or {}).get("data") or {}
    names = [str(data["corpus"])] if data.get("corpus") else []
    if data.get("dev") not in (None, "auto", "split", "sibling"):
        names.append(str(data["dev"]))
    return names


def _metric(type_: str, value: float, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"type": type_, "value": round(float(value), 4), "name": name}
    if args:
        m["args"] = args
    return m


#: Result keys the card describes in detail; every other headline column gets one generic line.
_PAIRS = dict(pair_tasks())


def _headline_name(rec: ModelRecord, key: str) -> str:
    """What the headline of result ``key`` averages, as the protocol defines it."""
    result = rec.results.get(key, {})
    if key in _PAIRS:
        return f"macro accuracy over {result.get('aggregation', 'phenomena')} (%, protocol {rec.protocol})"
    metric, words = _measure(rec, key)
    return f"headline {words} ({'%' if metric == 'accuracy' else 'x100'}, protocol {rec.protocol})"


def _measure(rec: ModelRecord, key: str) -> tuple[str, str]:
    """(metric id, words) of result ``key``'s headline, as its evaluator declares it (registry.Evaluator)."""
    return rec.measures.get(key, ("accuracy", "accuracy"))


def _model_index(rec: ModelRecord) -> list[dict[str, Any]]:
    results = []
    corpus = ", ".join(_datasets(rec)) or "dev split"
    if ppl := rec.results.get("perplexity"):
        results.append({
            "task": {"type": "text-generation", "name": "Causal language modelling"},
            "dataset": {"name": f"dev split of {corpus}", "type": "babyllama-dev"},
            "metrics": [
                _metric("cross_entropy", ppl["ce_nats_per_token"], "dev CE (nats/token)",
                        {"seq_len": ppl.get("seq_len"), "tokens_scored": ppl.get("tokens_scored")}),
                _metric("perplexity", ppl["perplexity"], "dev perplexity (per token)"),
            ] + ([_metric("bits_per_word", ppl["bits_per_word"], "dev bits per word")] if "bits_per_word" in ppl else []),
        })
    for key, column in rec.columns.items():
        if key not in rec.headlines or key.startswith("finetune/"):
            continue
        r, label = rec.results[key], _PAIRS.get(key, column.removesuffix(" %"))
        subset = key in _PAIRS and is_embedded(r)
        results.append({
            "task": {"type": "text-generation", "name": f"{label} (zero-shot)"},
            "dataset": {"name": f"{label} ({pairs_dataset(r, label, short=True)})" if key in _PAIRS else label,
                        "type": f"{key}-embedded-subset" if subset else key},
            "metrics": [_metric(_measure(rec, key)[0], 100 * rec.headlines[key], _headline_name(rec, key),
                                {**r.get("protocol", {}), **({"n_pairs": r["n_pairs"]} if "n_pairs" in r else {})})],
        })
    for task, r in rec.finetune.items():
        results.append({
            "task": {"type": "text-classification", "name": f"{task} (fine-tuned)"},
            "dataset": {"name": task, "type": task},
            "metrics": [_metric(r.get("metric", "score"), 100 * r["score"], f"{task} {r.get('metric', 'score')} (x100)")],
        })
    return [{"name": rec.name, "results": results}] if results else []


def front_matter(rec: ModelRecord, license_: str, language: str, extra_tags: list[str], *, gguf: bool = False,
                 base_model: str | None = None) -> dict[str, Any]:
    """The Hub's metadata block; a GGUF card names its library as gguf and, given ``base_model``, the
    original it quantizes (so the Hub lists it under the original's quantizations)."""
    tags = ["babylm", "babyllama", "distillation", rec.arch, *extra_tags]
    fm: dict[str, Any] = {"language": [language], "license": license_, "library_name": "gguf" if gguf else "transformers",
                          "pipeline_tag": "text-generation", "tags": tags}
    if gguf and base_model:
        fm["base_model"] = base_model
        fm["base_model_relation"] = "quantized"
    if datasets := _datasets(rec):
        fm["datasets"] = datasets
    if index := _model_index(rec):
        fm["model-index"] = index
    return fm


def _architecture(rec: ModelRecord) -> list[str]:
    c = rec.hf_config
    if rec.arch == "llama":
        rows = [("layers", c.get("num_hidden_layers")), ("hidden size", c.get("hidden_size")),
                ("attention heads", c.get("num_attention_heads")), ("key/value heads", c.get("num_key_value_heads")),
                ("MLP width (SwiGLU)", c.get("intermediate_size")), ("context", c.get("max_position_embeddings"))]
    elif rec.arch == "gpt2":
        rows = [("layers", c.get("n_layer")), ("hidden size", c.get("n_embd")), ("attention heads", c.get("n_head")),
                ("MLP width", c.get("n_inner") or 4 * int(c.get("n_embd", 0))), ("context", c.get("n_positions"))]
    else:
        rows = []
    rows += [("vocabulary", c.get("vocab_size")), ("tied input/output embeddings", {True: "yes", False: "no"}.get(c.get("tie_word_embeddings"))),
             ("parameters", f"{parameter_count(rec):,}")]
    return ["| | |", "|---|---|", f"| class | `{(c.get('architectures') or ['?'])[0]}` |"] + [
        f"| {k} | {v} |" for k, v in rows if v is not None]


def _cache_words(cache: dict[str, Any]) -> str:
    """How the student read its teachers: live, the sampled cache, or the top-k cache."""
    if not cache.get("enabled"):
        return ", teachers run live."
    from babyllama.distill.formats import FORMATS

    fmt = FORMATS.get(str(cache.get("mode")))
    return f", teacher logits from a {cache.get('mode')!r} cache." if fmt is None else fmt.card_words(cache)


def _training(rec: ModelRecord) -> list[str]:
    t = rec.training
    if not t:
        return ["The folder has no training record (training_summary.json); nothing is claimed about training."]
    obj = t.get("objective", {})
    lines = [f"Role: **{rec.role}**."]
    if obj.get("objective") == "distill":
        teachers = ", ".join(f"`{name}` (weights sha256 {digest[:12]})" for name, digest in obj.get("teachers", []))
        cache = obj.get("cache") or {}
        lines += ["", f"Distilled from the ensemble of {teachers}: loss = α·CE + (1−α)·T²·KD with α = {obj.get('alpha')}, "
                      f"T = {obj.get('temperature')}, ensemble `{obj.get('ensemble')}` (weights {obj.get('weights')}), "
                      f"divergence `{obj.get('divergence')}`, reduction `{obj.get('reduction')}`"
                      + _cache_words(cache)]
    else:
        lines += ["", "Trained from scratch with the plain next-token cross-entropy: control: no distillation."
                  if rec.run_role is Role.CONTROL else "Trained from scratch with the plain next-token cross-entropy."]
    lines += ["", "| | |", "|---|---|"]
    for key, label, fmt in (("steps", "optimizer steps", "{:,}"), ("epochs_seen", "epochs", "{:.2f}"),
                            ("global_batch", "global batch (sequences)", "{:,}"), ("world_size", "processes", "{}"),
                            ("tokens_seen", "tokens seen", "{:,}"), ("words_seen", "words seen", "{:,.0f}"),
                            ("selected", "weights kept", "{}"), ("best_dev_loss", "best dev loss (training objective)", "{:.4f}"),
                            ("wall_time_s", "training wall time (s)", "{:.1f}")):
        if t.get(key) is not None:
            lines.append(f"| {label} | {fmt.format(t[key])} |")
    return lines


def _data(rec: ModelRecord) -> list[str]:
    data = (rec.run_config or {}).get("data")
    if not data:
        return ["The run's config.yaml was not found next to the model; the training data is not described here."]
    lines = [f"Corpus as configured: `{data.get('corpus')}` (format `{data.get('format')}`, dev `{data.get('dev')}`), "
             f"windows of {data.get('seq_len')} tokens, document separator `{data.get('separator')}`"
             + (f", capped at {data['max_words']:,} words" if data.get("max_words") else "") + "."]
    ledger = (rec.manifest or {}).get("ledger")
    if ledger:
        verdict = "within" if ledger.get("within_budget") else "OVER"
        lines += ["", f"Word-budget ledger (training split, as prepared): {ledger['total_words']:,} words, {verdict} the "
                      f"budget of {ledger['budget']:,}.", "", "| source | words |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(ledger.get("words_by_source", {}).items())]
    lines += _compliance(rec)
    return lines


def _compliance(rec: ModelRecord) -> list[str]:
    """The run's ledger.json: this model's exposure, the student's second reading, the rule verdicts."""
    from babyllama.ledger import verdict_lines

    led = rec.ledger
    if not led:
        return ["", "The run's ledger.json was not found; words seen per model and rule verdicts are not stated here."]
    lines = []
    own = (led.get("models") or {}).get(rec.name)
    if own and own.get("words_seen") is not None:
        epochs = f", {own['epochs']:.2f} epochs" if own.get("epochs") is not None else ""
        lines += ["", f"Exposure (ledger.json): {own['words_seen']:,.0f} words seen of a {own.get('pool_words') or 0:,}-word "
                      f"pool{epochs}" + (" (planned, not yet trained)" if own.get("planned") else "") + "."]
    if own and own.get("role") == Role.STUDENT.short and led.get("student_with_teachers_words") is not None:
        lines.append(f"With its teachers' words added (a second reading of the cap): "
                     f"{led['student_with_teachers_words']:,.0f} words.")
    if led.get("verdicts"):
        lines += ["", f"Rules `{led.get('rules')}`" + (" — this run BREAKS a rule:" if led.get("breaks_rules") else ":")]
        lines += [f"- {line}" for line in verdict_lines(led)]
    return lines


def _pairs_line(rec: ModelRecord, key: str) -> str:
    b, p = rec.results[key], rec.results[key].get("protocol", {})
    return (f"- **{_PAIRS[key]}** {100 * rec.headlines[key]:.1f}%, the {_headline_name(rec, key)} (over phenomena "
            f"{100 * b.get('macro_phenomena', float('nan')):.1f}%, over paradigms "
            f"{100 * b.get('macro_paradigms', float('nan')):.1f}%, all pairs {100 * b.get('accuracy', float('nan')):.1f}%) "
            f"on the {pairs_dataset(b, _PAIRS[key])}; prefix `{p.get('prefix')}`, leading space {p.get('leading_space')}, "
            f"sentence score = {p.get('reduction')} of token log-probs, ties counted "
            f"{p.get('ties') or ('correct' if p.get('ties_correct') else 'wrong')}.")


def _evaluation(rec: ModelRecord) -> list[str]:
    if rec.config_problem:
        return [f"The run's config.yaml could not be read ({rec.config_problem}); no evaluation is claimed here."]
    lines: list[str] = []
    if ppl := rec.results.get("perplexity"):
        lines += [f"- **Dev cross-entropy** {ppl['ce_nats_per_token']:.4f} nats/token (perplexity {ppl['perplexity']:.2f}"
                  + (f", {ppl['bits_per_word']:.3f} bits/word" if "bits_per_word" in ppl else "")
                  + f"): {ppl.get('tokens_scored', '?'):,} tokens in {ppl.get('windows', '?')} non-overlapping windows of "
                  f"{ppl.get('seq_len')} tokens of the run's dev split."]
    for key, column in rec.columns.items():
        if key not in rec.headlines or key.startswith("finetune/"):
            continue
        if key in _PAIRS:
            lines.append(_pairs_line(rec, key))
        else:
            n = rec.results[key].get("n_items")
            unit = "%" if _measure(rec, key)[0] == "accuracy" else ""
            lines.append(f"- **{column.removesuffix(' %')}** {100 * rec.headlines[key]:.1f}{unit}, the {_headline_name(rec, key)}"
                         + (f" on {n:,} items." if isinstance(n, int) else "."))
    for task, r in rec.finetune.items():
        where = "the validation file itself" if r.get("selected_on") == "validation" else "a hold-out of train"
        lines.append(f"- **{task}** (fine-tuned, selected on {where}, scored on validation): "
                     f"{r.get('metric')} {100 * r['score']:.1f} on {r.get('n_eval', '?')} examples.")
    return lines or ["No evaluation was recorded for this model (no eval/<name>/*.json in its run)."]


def _environment(rec: ModelRecord) -> list[str]:
    env = rec.environment
    if not env:
        return ["Not recorded (the run has no summary.json)."]
    pkgs = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
    gpus = ", ".join(map(str, env.get("gpus") or [])) or "none"
    return [f"As recorded by the run's report: Python {env.get('python')}, {env.get('platform')}, "
            f"{env.get('cpu_count')} CPUs, GPUs: {gpus}; {pkgs}."]


def _usage(rec: ModelRecord, gguf_files: list[str]) -> list[str]:
    if not gguf_files:
        return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")',
                'tok = AutoTokenizer.from_pretrained("PATH_OR_REPO")', "```"]
    return ["With llama.cpp (or anything built on it):", "", "```bash",
            f"llama-cli -m {gguf_files[0]} -p \" The child\" -n 32", "```",
            *_tokenizer_note(rec)]


def _tokenizer_note(rec: ModelRecord) -> list[str]:
    """What our tokenizer does to text that llama.cpp's BPE tokenizer does not (read from tokenizer.json)."""
    path = rec.model_dir / "tokenizer.json"
    tj = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    steps = []
    if norm := (tj.get("normalizer") or {}).get("type"):
        steps.append(f"normalises text ({norm})")
    if (tj.get("pre_tokenizer") or {}).get("add_prefix_space"):
        steps.append("puts a space before the first word")
    if not steps:
        return []
    return ["", f"The Hugging Face tokenizer {' and '.join(steps)}; llama.cpp's BPE tokenizer does not, so start "
                "prompts with a space for the tokens the model was trained on."]


def render_card(rec: ModelRecord, *, license_: str, language: str, gguf_files: list[str] | None = None,
                source_sha256: str | None = None, base_model: str | None = None) -> str:
    gguf_files = gguf_files or []
    fm = front_matter(rec, license_, language, ["gguf"] if gguf_files else [], gguf=bool(gguf_files),
                      base_model=base_model)
    desc = (rec.training or {}).get("description")
    parts = ["---", yaml.safe_dump(fm, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {rec.name}", "",
             f"A {ARCH_NAMES.get(rec.arch, rec.arch)} causal language model "
             f"({parameter_count(rec):,} parameters) trained with babyllama "
             f"(the Baby Llama ensemble-distillation recipe, Timiryasov & Tastet 2023): {rec.role}."
             + (f" Run record: \"{desc}\"." if desc else ""), "",
             "Everything below is read from the files the training run wrote; nothing here was measured at export.",
             "", "## Model", "", *_architecture(rec), "", "## Training", "", *_training(rec), "",
             "## Data", "", *_data(rec), "", "## Evaluation", "", *_evaluation(rec), "",
             "## Environment", "", *_environment(rec), "", "## How to load", "", *_usage(rec, gguf_files), ""]
    if gguf_files:
        parts += ["## Files", "", "One file per quant, all from the same weights:", "",
                  *[f"- `{f}`" for f in gguf_files], ""]
        if base_model:
            parts[parts.index("## Files") + 1:parts.index("## Files") + 1] = [
                "", f"Quantized from [{base_model}](https://huggingface.co/{base_model})."]
    parts += [f"Exported by babyllama {babyllama.__version__}"
              + (f" from weights with sha256 {source_sha256}" if source_sha256 else "") + ".", ""]
    return "\n".join(parts)
