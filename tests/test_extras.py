"""Each optional extra installs what its entry point imports (checked where the extra is installed)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

#: extra -> (the module that says it is installed, the modules its entry points import)
ENTRY_MODULES = {
    "lmeval": ("lm_eval", ["lm_eval", "lm_eval.models.huggingface", "accelerate"]),  # `lm_eval --model hf ...`
    "bench": ("accelerate", ["accelerate", "transformers.trainer"]),  # benchmarks/bench_vs_trainer.py
    "tensorboard": ("tensorboard", ["torch.utils.tensorboard"]),  # logging.tensorboard
    "wandb": ("wandb", ["wandb"]),  # logging.wandb
    "llama-cpp": ("llama_cpp", ["llama_cpp"]),  # tests/test_export.py, benchmarks/bench_export.py
}


def _declared_extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def test_every_runtime_extra_has_its_entry_modules_listed_here() -> None:
    assert set(_declared_extras()) - {"dev"} == set(ENTRY_MODULES)
    assert any(req.startswith("accelerate") for req in _declared_extras()["lmeval"])


@pytest.mark.parametrize("extra", sorted(ENTRY_MODULES))
def test_an_installed_extra_imports_its_entry_modules(extra: str) -> None:
    marker, modules = ENTRY_MODULES[extra]
    if importlib.util.find_spec(marker) is None:
        pytest.skip(f"the {extra!r} extra is not installed (pip install -e '.[{extra}]')")
    for name in modules:
        importlib.import_module(name)
