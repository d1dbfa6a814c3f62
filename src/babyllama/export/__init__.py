"""`babyllama export`: publish a trained model as a Hub-ready folder or a GGUF file, with a model card.

The whole destination folder is built under a temporary name and renamed into place, so an interrupted
export leaves either the previous export or nothing. A destination that holds anything an export would
not write is refused rather than replaced. GGUF exports of one model's weights in several quants live
side by side in one folder (as Hub GGUF repositories hold them): a new quant keeps the others, and the
card lists them all; GGUF files of other weights are refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from babyllama.errors import UserError
from babyllama.io import atomic_path, file_sha256

FORMATS = ("hf", "gguf", "babylm-submission")
HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "model.safetensors.index.json")


def _check_destination(to: Path) -> None:
    if to.is_file():
        raise UserError(f"--to {to}: is a file, expected a folder to write the export into")
    if not to.is_dir():
        return
    ours = {"README.md", *HF_FILES}
    strangers = [p.name for p in to.iterdir()
                 if not (p.name in ours or p.suffix in (".gguf", ".safetensors"))]
    if strangers:
        raise UserError(f"--to {to}: holds files an export does not write ({', '.join(sorted(strangers)[:3])}); "
                        "give an empty or new folder")


def _earlier_quants(to: Path, rec, quant: str, sha: str | None) -> list[Path]:
    """The GGUF files of other quants of the same weights already in ``to`` (kept beside the new one)."""
    if not to.is_dir():
        return []
    ggufs = sorted(to.glob("*.gguf"))
    if not ggufs:
        return []
    card = (to / "README.md").read_text(encoding="utf-8") if (to / "README.md").is_file() else ""
    foreign = [p.name for p in ggufs if not p.name.startswith(f"{rec.name}-")]
    if foreign or (sha and f"sha256 {sha}" not in card):
        what = ", ".join(foreign[:3]) or "GGUF files of other weights (per its README.md)"
        raise UserError(f"--to {to}: holds {what}; several quants share a folder only when they come from the same "
                        "weights; give a new folder")
    return [p for p in ggufs if p.name != f"{rec.name}-{quant}.gguf"]


def _keep(files: list[Path], folder: Path) -> None:
    """Carry earlier files into the new folder (a hard link where possible: no copy of big files)."""
    for f in files:
        try:
            os.link(f, folder / f.name)
        except OSError:
            shutil.copy2(f, folder / f.name)


def _copy_hf(rec, folder: Path) -> None:
    """Weights, tokenizer and configs only: no metrics log, checkpoint record or training state."""
    from babyllama.export.record import inside

    for name in HF_FILES:
        if (rec.model_dir / name).is_file() or (rec.model_dir / name).is_symlink():
            shutil.copy2(inside(rec.model_dir, name, name), folder / name)
    for f in rec.weight_files:
        shutil.copy2(f, folder / f.name)


def export_model(model_dir: str | Path, to: str | Path, fmt: str = "gguf", quant: str | None = None,
                 license_: str = "apache-2.0", language: str = "en", base_model: str | None = None) -> list[Path]:
    """Export ``model_dir`` into the folder ``to``; return the files written.

    ``base_model``: the Hub id the GGUF quantizes (the `--format hf` upload), so the Hub lists it as a quantization."""
    from babyllama.export.card import render_card
    from babyllama.export.gguf_file import QUANTS, check_exportable, write_gguf
    from babyllama.export.record import load_record

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "babylm-submission":
        from babyllama.export.submission import export_submission

        if quant is not None:
            raise UserError("--quant applies to --format gguf only")
        return export_submission(model_dir, to)
    if quant is not None and fmt == "hf":
        raise UserError("--quant applies to --format gguf only (the hf folder keeps the weights as trained)")
    quant = quant or "f16"
    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r}: expected one of {', '.join(QUANTS)}")
    to = Path(to)
    rec = load_record(model_dir)
    if fmt == "gguf":
        check_exportable(rec)
    _check_destination(to)
    sha = file_sha256(rec.weight_files[0]) if len(rec.weight_files) == 1 else None
    earlier = _earlier_quants(to, rec, quant, sha) if fmt == "gguf" else []
    with atomic_path(to) as tmp:
        tmp.mkdir()
        gguf_files: list[str] = []
        if fmt == "hf":
            _copy_hf(rec, tmp)
        else:
            name = f"{rec.name}-{quant}.gguf"
            counts = write_gguf(rec, tmp / name, quant, {
                "description": (rec.training or {}).get("description", f"babyllama {rec.arch} model"),
                "license": license_, "languages": [language], "tags": ["babylm", "babyllama", "distillation"]})
            _keep(earlier, tmp)
            gguf_files = sorted([name, *(p.name for p in earlier)])
            print(f"export: {name}: " + ", ".join(f"{n} {k} tensors" for k, n in sorted(counts.items()))
                  + (f"; kept {', '.join(p.name for p in earlier)}" if earlier else ""))
            if not base_model:
                print("export: no --base-model: the card cannot link the GGUF to its Hub original; pass --base-model "
                      "OWNER/NAME (the id of the `--format hf` upload) to have it listed as a quantization")
        (tmp / "README.md").write_text(render_card(rec, license_=license_, language=language, gguf_files=gguf_files,
                                                   source_sha256=sha, base_model=base_model), encoding="utf-8")
        written = sorted(p.name for p in tmp.iterdir())
    return [to / n for n in written]
