"""Inputs every evaluator shares: JSON-lines data files and Hugging Face causal-LM folders.

The evaluators accept any Hugging Face causal-LM directory, not only ours, so the checks here turn the
usual ways that goes wrong (a wrong folder, a masked LM, a malformed line) into one-line `UserError`s.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from babyllama.errors import UserError
from babyllama.hf_logging import quiet_transformers

if TYPE_CHECKING:  # torch is imported where a model is loaded: readers of data and results need none
    import torch

#: What loading a damaged model folder raises (truncated or corrupted safetensors, wrong shapes).
LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)


def _config_errors() -> tuple[type[BaseException], ...]:
    """What reading a malformed config.json raises: JSON and type errors, and huggingface_hub's strict
    dataclass validation (a field of the wrong type), which is none of those."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: configs are not validated this way
        return (ValueError, OSError, KeyError, TypeError, AttributeError)
    return (ValueError, OSError, KeyError, TypeError, AttributeError, StrictDataclassError)


#: Data shipped inside the package (evaluate/data/README.md: source, licence, how it was made).
EMBEDDED = {"embedded:blimp": Path(__file__).parent / "data" / "blimp-100.jsonl.gz"}


def resolve_data(data: str | Path) -> Path:
    """A data path, with ``embedded:<name>`` mapped to the package's copy and ``~`` expanded."""
    text = str(data)
    if text.startswith("embedded:"):
        if text not in EMBEDDED:
            raise UserError(f"{text}: no such embedded data set (known: {', '.join(EMBEDDED)})")
        return EMBEDDED[text]
    return Path(text).expanduser()


def read_json_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a JSON-lines file, each with its location ("line 7") for error messages.

    A ``.json`` file may also hold one JSON array of objects (``datasets`` writes either form); a
    ``.gz`` file is read through gzip. Blank lines are skipped.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except gzip.BadGzipFile:
        raise UserError(f"{path}: not a gzip file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise UserError(f"{path}: JSON nested too deeply") from None
        rows = [(f"item {i + 1}", item) for i, item in enumerate(items)]
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise UserError(f"{path}: line {lineno}: JSON nested too deeply") from None
    for loc, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{path}: {loc}: expected a JSON object, got {type(row).__name__}")
    return rows


def text_field(path: Path, loc: str, row: dict[str, Any], key: str) -> str:
    """``row[key]`` as a string, or a UserError naming the file, line and field."""
    if key not in row:
        raise UserError(f"{path}: {loc}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise UserError(f"{path}: {loc}: field {key!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\ud800" escape decodes to a lone surrogate, which is not text
        raise UserError(f"{path}: {loc}: field {key!r} holds a lone surrogate (U+{ord(value[e.start]):04X}), "
                        "not text") from None
    return value


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def resolve_model_dir(model: str | Path) -> Path:
    """A model folder, or a Hub model id already in the local Hugging Face cache (looked up without network).

    babyllama never downloads a model: an id that is not cached is named with the command that fetches it."""
    path = Path(model).expanduser()
    if path.is_dir() or not _REPO_ID.match(str(model)):
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=str(model), local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        raise UserError(f"{model}: no such model folder, and no model {model!r} in the local Hugging Face cache "
                        f"({constants.HF_HUB_CACHE}); babyllama does not download models: run "
                        f"`huggingface-cli download {model}` first, or give a folder") from None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])[:200] if lines else type(e).__name__


def check_causal_lm_dir(model_dir: str | Path) -> Path:
    """Fail early, with one line, unless ``model_dir`` is a Hugging Face causal-LM folder."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(f"{path}: model folder not found")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path)
    except _config_errors() as e:
        raise UserError(f"{path}/config.json: cannot be read as a Hugging Face config ({_first_line(e)})") from None
    causal_classes = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_classes.update([v] if isinstance(v, str) else v)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a in causal_classes for a in archs):
        raise UserError(f"{path}: architecture {archs[0]} is not a causal language model (expected e.g. LlamaForCausalLM)")
    if not archs and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{path}: model type {config.model_type!r} has no causal language model class")
    return path


def check_model_files(model_dir: str | Path, *, causal: bool = True) -> Path:
    """A model folder as it is read anywhere: a config that parses (``causal``: of a causal LM), files
    matching the sha256 sums of its checkpoint.json where it has one, safetensors files whose headers
    parse, a tokenizer.json that loads. One UserError naming the file otherwise; nothing is computed from
    a damaged folder."""
    from safetensors import safe_open
    from transformers import AutoConfig

    from babyllama.io import CHECKPOINT_RECORD as MANIFEST_FILE
    from babyllama.io import damaged_file

    if causal:
        path = check_causal_lm_dir(model_dir)
    else:
        path = Path(model_dir)
        try:
            AutoConfig.from_pretrained(path)
        except _config_errors() as e:
            raise UserError(f"{path}/config.json: cannot be read as a Hugging Face config ({_first_line(e)})") from None
    if (path / MANIFEST_FILE).is_file() and (bad := damaged_file(path)) is not None:
        raise UserError(f"{path / bad}: does not match the sha256 in {path / MANIFEST_FILE} (damaged); retrain the "
                        "model (`babyllama run` redoes a damaged model) or restore the folder")
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="numpy") as st:
                list(st.keys())
        except LOAD_ERRORS as e:
            raise UserError(f"{f}: cannot load: not a readable safetensors file ({_first_line(e)})") from None
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises its own Exception subclass for any malformed file
            raise UserError(f"{path / 'tokenizer.json'}: not a readable tokenizer ({_first_line(e)})") from None
    return path


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{model_dir}: no usable tokenizer in the model folder ({_first_line(e)})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def has_tokenizer(model_dir: str | Path) -> bool:
    return any((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES)


def load_causal_lm(model_dir: str | Path, device: torch.device, *, need_tokenizer: bool = True):
    """Model (fp32, eval mode, on ``device``) and tokenizer (None if absent and not needed) of a causal-LM folder.

    Scores are computed in fp32 whatever dtype the checkpoint was saved in, so they do not depend on
    the machine's half-precision kernels.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = check_model_files(model_dir)
    tokenizer = load_tokenizer(path) if need_tokenizer or has_tokenizer(path) else None
    with quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except LOAD_ERRORS as e:
            raise UserError(f"{path}: cannot load the causal language model ({_first_line(e)})") from None
    return model.to(device).eval(), tokenizer


def max_positions(config: Any) -> int | None:
    """Longest input the model accepts (GPT-2 calls it n_positions), or None when unbounded."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def special_token_id(tokenizer: Any, config: Any, kind: str) -> int | None:
    """The tokenizer's ``bos``/``eos``/``pad`` id, else the model config's, else None."""
    tid = getattr(tokenizer, f"{kind}_token_id", None)
    if tid is None:
        tid = getattr(config, f"{kind}_token_id", None)
        if isinstance(tid, list | tuple):
            tid = tid[0] if tid else None
    return tid
