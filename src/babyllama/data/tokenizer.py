"""The shared BPE tokenizer: built with HF `tokenizers`, saved as a plain Hugging Face tokenizer folder.

Recipe of the reference notebook: byte-level BPE, NFKC normaliser, ``ByteLevel(add_prefix_space=True)``
pre-tokenizer and decoder, special tokens ``<pad>``=0, ``<s>``=1, ``</s>``=2, trained on the train split
only; encoding adds no special tokens (the data stage inserts ``</s>`` itself, see prepare.py). One change:
the trainer starts from all 256 byte symbols, so text with characters never seen in training (dev, BLiMP)
still encodes losslessly instead of losing those characters.

The saved folder (tokenizer.json + tokenizer_config.json) loads with ``AutoTokenizer.from_pretrained``
without any babyllama code, with pad/bos/eos set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from babyllama.config import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
from babyllama.errors import UserError
from babyllama.io import atomic_path, atomic_write_json, file_sha256, read_json

if TYPE_CHECKING:  # transformers loads where a tokenizer is saved or loaded: `run` on prepared data needs none
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TOKENIZER_DIR = "tokenizer"
#: Tokenizer files copied with tokenizer.json when a tokenizer is taken from a model folder (tokenizer.from).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja")
T = TypeVar("T")


def new_tokenizer(add_prefix_space: bool = True) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


def train_tokenizer(
    batches: Iterable[list[str]], vocab_size: int, min_frequency: int, *, length: int | None = None, progress: bool = True
) -> Tokenizer:
    """Train the BPE on batches of training text (every string is one sequence)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"tokenizer.vocab_size {vocab_size} is too small: need at least {MIN_VOCAB_SIZE} "
                        "(3 special tokens + 256 byte symbols)")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(batches, trainer=trainer, length=length)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != [PAD_ID, BOS_ID, EOS_ID]:  # the trainer places special tokens first; the whole project relies on it
        raise RuntimeError(f"special token ids {ids}, expected [0, 1, 2]")
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path, model_max_length: int) -> None:
    """Write an AutoTokenizer-loadable folder atomically (all files appear at once)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=model_max_length
    )
    with atomic_path(folder) as tmp:
        hf.save_pretrained(str(tmp))
        _portable_config(tmp, model_max_length)


def _portable_config(folder: Path, model_max_length: int) -> None:
    """Name the generic fast class (which every transformers version resolves) rather than a 5.x alias."""
    path = folder / "tokenizer_config.json"
    cfg = read_json(path)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = model_max_length
    cfg.setdefault("add_bos_token", False)
    cfg.setdefault("add_eos_token", False)
    atomic_write_json(path, cfg)


def set_model_max_length(folder: Path, model_max_length: int) -> bool:
    """Update the saved model_max_length in place (the ids do not change); True if it changed."""
    path = folder / "tokenizer_config.json"
    cfg = read_json(path)
    if cfg.get("model_max_length") == model_max_length:
        return False
    cfg["model_max_length"] = model_max_length
    atomic_write_json(path, cfg)
    return True


def tokenizer_hash(folder: Path) -> str:
    """Identity of the mapping text -> ids: the hash of tokenizer.json (not of max-length settings)."""
    return file_sha256(folder / "tokenizer.json")


def tokenizer_dir(path: str | Path) -> Path:
    """Accept either <out_dir>/data or <out_dir>/data/tokenizer."""
    path = Path(path)
    if (path / TOKENIZER_DIR / "tokenizer.json").is_file():
        return path / TOKENIZER_DIR
    return path


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load the shared tokenizer from a prepared data folder or the tokenizer folder itself."""
    folder = tokenizer_dir(path)
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{path}: no tokenizer: not prepared — run `babyllama prepare CONFIG` first")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch



# -- an existing model's tokenizer (tokenizer.from) ----------------------------------------------------


def existing_tokenizer(folder: Path, key: str = "tokenizer.from") -> tuple[Tokenizer, int, dict[str, int | None]]:
    """(tokenizer, vocabulary size, {pad, bos, eos} ids) of an existing model's tokenizer folder.

    The vocabulary is the model's output width when its config.json says more than the tokenizer holds
    (models pad their embeddings, e.g. Qwen2), so a student built on it matches the teacher's logits."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    size = tok.get_vocab_size(with_added_tokens=True)
    config = folder / "config.json"
    if config.is_file():
        hf = read_json(config)
        hf = hf.get("text_config") or hf
        size = max(size, int(hf.get("vocab_size") or 0))
    if size > MAX_VOCAB_SIZE:
        raise UserError(f"{key}: {folder}: a vocabulary of {size:,} tokens (at most {MAX_VOCAB_SIZE:,} supported)")
    from transformers import AutoTokenizer

    try:
        hf_tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise UserError(f"{key}: {folder}: the tokenizer cannot be loaded ({str(e).splitlines()[0]})") from None
    special = {k: getattr(hf_tok, f"{k}_token_id", None) for k in ("pad", "bos", "eos")}
    return tok, size, special


def copy_tokenizer(folder: Path, dest: Path, model_max_length: int) -> None:
    """The tokenizer files of ``folder``, byte for byte (tokenizer.json keeps its hash: the teacher's and
    the student's compare equal), with only model_max_length set; atomic."""
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                (tmp / name).write_bytes((folder / name).read_bytes())
        if not (tmp / "tokenizer_config.json").is_file():
            atomic_write_json(tmp / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"})
        set_model_max_length(tmp, model_max_length)
