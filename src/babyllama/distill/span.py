"""Teachers with their own tokenizer (``distill.vocab_alignment: span``): align on the text, distil per span.

For each training window the student's token ids are turned back into the bytes they stand for (the
normalised text, as the student saw it), that text is tokenized by the teacher's own tokenizer, and the
two token sequences are laid on one byte axis. A student position and a teacher position are **aligned**
when the student token and the teacher token end at the same byte: from there both models predict what
text comes next. Only aligned positions carry a KD term; a position inside a teacher token that
straddles student tokens (a merge across the student's boundary) has none (CE still applies).

At an aligned position the teacher's next-token distribution is mapped into the student's vocabulary
through the tokens both vocabularies share (the same bytes; special tokens by role): its ``SPAN_TOP_K``
most probable shared tokens become buckets and everything else one tail bucket — the top-k + tail
divergence the cache uses (loss.py), so any divergence applies. Several teachers are aligned one by
one and their divergences averaged with the ensemble weights (each has its own buckets, so their
distributions cannot be mixed token by token first).

What this approximates, and where it is wrong: a teacher token and a student token with the same bytes
are treated as the same event, although "the" as a next token of one tokenizer excludes "there" while
the other tokenizer may split "there" as "the"+"re" (the mass of longer continuations is not
redistributed: approximate likelihood matching would compare chunk likelihoods instead); teacher mass
on tokens the student lacks goes to the tail, where the student's own unshared tokens sit. Pitfalls
handled: a window that starts or ends inside a multi-byte character (those bytes are left out of the
teacher's text, the positions that end there are not aligned); a teacher whose tokenizer adds a BOS
(it gets its BOS first, as in its training, and that position is not used); document separators (the
student's </s> becomes the teacher's eos, aligned one to one); teacher text longer than the teacher's
context (cut; positions beyond are not aligned).

With the teacher cache (``distill.cache.mode: span``) the build calls :func:`score_aligned` once per
window and stores every teacher's :class:`AlignedRows` (formats.SpanFormat): the cached loss is the
live one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from babyllama.distill.loss import SparseTeachers, _upcast
from babyllama.errors import UserError

#: Shared tokens kept per aligned position (the rest of the teacher's mass is one tail bucket).
SPAN_TOP_K = 128
_ROLES = ("pad", "bos", "eos", "unk")


@cache
def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (printable stand-ins for the 256 bytes) back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in = dict(zip(printable, printable, strict=True))
    extra = 0
    for b in range(256):
        if b not in stand_in:
            stand_in[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in stand_in.items()}


def _token_bytes(tok: Tokenizer, raw: dict) -> list[bytes | None]:
    """Bytes of every token id (None for special tokens), for byte-level and SentencePiece-style vocabularies."""
    byte_level = "ByteLevel" in json.dumps(raw.get("decoder") or {}) or "ByteLevel" in json.dumps(raw.get("pre_tokenizer") or {})
    special = {a["id"] for a in raw.get("added_tokens", []) if a.get("special")}
    table = _byte_decoder()
    out: list[bytes | None] = []
    for i in range(tok.get_vocab_size(with_added_tokens=True)):
        piece = tok.id_to_token(i)
        if piece is None or i in special:
            out.append(None)
        elif byte_level:
            try:
                out.append(bytes(table[c] for c in piece))
            except KeyError:  # an added, non-special token written as plain text
                out.append(piece.encode())
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode())
    return out


@dataclass
class SideTokenizer:
    """One side's tokenizer as the aligner needs it: bytes per id, special ids by role, BOS habit."""

    tok: Tokenizer
    pieces: list[bytes | None]
    roles: dict[str, int | None]
    adds_bos: bool

    @classmethod
    def load(cls, folder: Path, what: str) -> SideTokenizer:
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{what} ({folder}) has no tokenizer.json: vocab_alignment 'span' tokenizes the text "
                            "with each teacher's own tokenizer")
        raw = json.loads(path.read_text(encoding="utf-8"))
        tok = Tokenizer.from_file(str(path))
        roles = _special_roles(folder, tok)
        probe = tok.encode("a", add_special_tokens=True).ids
        adds_bos = roles["bos"] is not None and bool(probe) and probe[0] == roles["bos"]
        # The text it will read is the student's, spaces included: it must not add a space of its own.
        verbatim = Tokenizer.from_str(json.dumps(_no_prefix_space(raw)))
        return cls(verbatim, _token_bytes(tok, raw), roles, adds_bos)


def _no_prefix_space(node):
    """A tokenizer.json tree whose pre-tokenizers add no leading space (ByteLevel, Metaspace)."""
    if isinstance(node, dict):
        out = {k: _no_prefix_space(v) for k, v in node.items()}
        if out.get("type") == "ByteLevel" and "add_prefix_space" in out:
            out["add_prefix_space"] = False
        if out.get("type") == "Metaspace" and "prepend_scheme" in out:
            out["prepend_scheme"] = "never"
        return out
    if isinstance(node, list):
        return [_no_prefix_space(v) for v in node]
    return node


def _special_roles(folder: Path, tok: Tokenizer) -> dict[str, int | None]:
    """pad/bos/eos/unk ids from tokenizer_config.json / special_tokens_map.json (else our </s>-style names)."""
    names: dict[str, str] = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / file).is_file():
            data = json.loads((folder / file).read_text(encoding="utf-8"))
            for role in _ROLES:
                value = data.get(f"{role}_token")
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    names.setdefault(role, value)
    for role, default in (("pad", "<pad>"), ("bos", "<s>"), ("eos", "</s>")):
        names.setdefault(role, default)
    return {role: tok.token_to_id(names[role]) if role in names else None for role in _ROLES}


@dataclass
class Alignment:
    """One batch aligned to one teacher: the teacher's input ids and the aligned (student, teacher) rows."""

    teacher_ids: Tensor  # (B, Lt) int64, right-padded
    student_rows: Tensor  # (n,) flattened student positions (b * L + i)
    teacher_rows: Tensor  # (n,) flattened teacher positions (b * Lt + j)
    positions: int  # student positions that predict a token (B * (L - 1))


class SpanAligner:
    """Aligns student windows with one teacher's tokenization and maps its distributions to the student's ids."""

    def __init__(self, student: SideTokenizer, teacher: SideTokenizer, max_positions: int | None) -> None:
        self.student, self.teacher, self.max_positions = student, teacher, max_positions
        by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(teacher.pieces):
            if b is not None:
                by_bytes.setdefault(b, i)
        pairs = [(s, by_bytes[b]) for s, b in enumerate(student.pieces) if b is not None and b in by_bytes]
        pairs += [(student.roles[r], teacher.roles[r]) for r in _ROLES
                  if student.roles[r] is not None and teacher.roles[r] is not None]
        if not pairs:
            raise UserError("vocab_alignment 'span': the teacher's and the student's vocabularies share no token")
        self.shared_student = torch.tensor([s for s, _ in pairs], dtype=torch.long)
        self.shared_teacher = torch.tensor([t for _, t in pairs], dtype=torch.long)

    @property
    def shared(self) -> int:
        return len(self.shared_student)

    def _window(self, ids: np.ndarray) -> tuple[list[int], np.ndarray, list[int]]:
        """(teacher ids, end byte of every student token (-1: never aligned), end byte of every teacher token)."""
        s_ends = np.full(len(ids), -1, dtype=np.int64)
        t_ids: list[int] = [self.teacher.roles["bos"]] if self.teacher.adds_bos else []
        t_ends: list[int] = [-2] if self.teacher.adds_bos else []
        pos, run, run_start = 0, bytearray(), 0

        def flush() -> None:
            nonlocal run
            self._encode_run(bytes(run), run_start, t_ids, t_ends)
            run = bytearray()

        for i, tid in enumerate(ids.tolist()):
            piece = self.student.pieces[tid] if tid < len(self.student.pieces) else None
            if piece is None:  # a special token: a one-byte stand-in on the shared axis, mapped by role
                flush()
                role = next((r for r in _ROLES if self.student.roles[r] == tid), None)
                teacher_id = self.teacher.roles.get(role) if role else None
                pos += 1
                if teacher_id is not None:
                    t_ids.append(teacher_id)
                    t_ends.append(pos)
                    s_ends[i] = pos
                run_start = pos
                continue
            run += piece
            pos += len(piece)
            s_ends[i] = pos
        flush()
        return t_ids, s_ends, t_ends

    def _encode_run(self, data: bytes, start: int, t_ids: list[int], t_ends: list[int]) -> None:
        """Tokenize one stretch of text (no special token inside) with the teacher's tokenizer."""
        if not data:
            return
        lo, hi = 0, len(data)
        while lo < min(3, hi) and (data[lo] & 0xC0) == 0x80:  # starts inside a multi-byte character
            lo += 1
        text = None
        for cut in range(0, 4):  # ends inside one: drop up to 3 bytes
            try:
                text = data[lo : hi - cut].decode("utf-8")
                hi -= cut
                break
            except UnicodeDecodeError:
                continue
        if not text:
            return
        enc = self.teacher.tok.encode(text, add_special_tokens=False)
        char_end = np.cumsum([len(c.encode("utf-8")) for c in text])  # byte end of every character
        for tid, (_, end) in zip(enc.ids, enc.offsets, strict=True):
            t_ids.append(tid)
            t_ends.append(start + lo + (int(char_end[end - 1]) if end > 0 else 0))

    def align(self, input_ids: Tensor) -> Alignment:
        """Align a batch of student windows (B, L) (any device) with this teacher's tokenization."""
        ids = input_ids.detach().cpu().numpy()
        b, length = ids.shape
        rows: list[tuple[list[int], np.ndarray, list[int]]] = [self._window(w) for w in ids]
        limit = self.max_positions or max(len(r[0]) for r in rows)
        width = max(1, min(limit, max(len(r[0]) for r in rows)))
        pad = self.teacher.roles["pad"] if self.teacher.roles["pad"] is not None else (self.teacher.roles["eos"] or 0)
        teacher = np.full((b, width), pad, dtype=np.int64)
        s_rows, t_rows = [], []
        for w, (t_ids, s_ends, t_ends) in enumerate(rows):
            t_ids, t_ends = t_ids[:width], t_ends[:width]
            teacher[w, : len(t_ids)] = t_ids
            where = {end: j for j, end in enumerate(t_ends)}
            for i in range(length - 1):  # the last position predicts nothing in the window
                j = where.get(int(s_ends[i])) if s_ends[i] >= 0 else None
                if j is not None:  # both end at this byte: both predict the text that follows it
                    s_rows.append(w * length + i)
                    t_rows.append(w * width + j)
        return Alignment(torch.from_numpy(teacher), torch.tensor(s_rows, dtype=torch.long),
                         torch.tensor(t_rows, dtype=torch.long), b * (length - 1))

    def aligned_rows(self, teacher_logits: Tensor, alignment: Alignment, n_rows: int, student_vocab: int,
                     temperature: float, top_k: int = SPAN_TOP_K) -> AlignedRows:
        """The teacher's tempered distributions over shared-token buckets for every flattened student row;
        unaligned rows hold a placeholder the mask switches off (what the loss reads, live or cached)."""
        device = teacher_logits.device
        z = teacher_logits.reshape(-1, teacher_logits.shape[-1])[alignment.teacher_rows.to(device)]
        lp = F.log_softmax(_upcast(z) / temperature, dim=-1).gather(-1, self.shared_teacher.to(device).expand(len(z), -1))
        k = min(top_k, self.shared)
        values, idx = lp.topk(k, dim=-1)
        ids = self.shared_student.to(device)[idx]
        tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))
        all_ids = torch.zeros((n_rows, k), dtype=torch.long, device=device)
        all_values = torch.full((n_rows, k), -float(np.log(k)), dtype=values.dtype, device=device)
        all_tail = torch.full((n_rows,), -30.0, dtype=values.dtype, device=device)
        rows = alignment.student_rows.to(device)
        all_ids[rows], all_values[rows], all_tail[rows] = ids, values, tail
        mask = torch.zeros(n_rows, dtype=torch.bool, device=device)
        mask[rows] = True
        full = k == self.shared == teacher_logits.shape[-1] == student_vocab  # one bucket per token, both sides
        return AlignedRows(all_ids, all_values, None if full else all_tail, mask, alignment.positions)

    def buckets(self, teacher_logits: Tensor, alignment: Alignment, n_rows: int, student_vocab: int,
                temperature: float, top_k: int = SPAN_TOP_K) -> tuple[SparseTeachers, Tensor]:
        """(the bucket distributions of :meth:`aligned_rows` as a teacher source, (n_rows,) aligned mask)."""
        rows = self.aligned_rows(teacher_logits, alignment, n_rows, student_vocab, temperature, top_k)
        return rows.source(), rows.mask


@dataclass
class AlignedRows:
    """One teacher's aligned bucket distributions over a batch's flattened student rows (N = B * L):
    ids (N, k) student ids, values (N, k) tempered log-probs, tail (N,) log tail mass (None when every
    token is its own bucket), mask (N,) the aligned rows, positions the rows that predict a token."""

    ids: Tensor
    values: Tensor
    tail: Tensor | None
    mask: Tensor
    positions: int

    def source(self) -> SparseTeachers:
        return SparseTeachers.from_top_k(self.ids, self.values, self.tail)

    @property
    def share(self) -> float:
        """The share of predicting positions with a KD term from this teacher."""
        return float(self.mask.sum()) / max(self.positions, 1)


def score_aligned(models: Sequence[torch.nn.Module], aligners: Sequence[SpanAligner], input_ids: Tensor,
                  student_vocab: int, temperature: float, device: torch.device) -> list[AlignedRows]:
    """Every teacher run on its own tokenization of the student windows ``input_ids`` (B, L), its
    distributions mapped onto the student's rows (the live objective and the span cache's build share it)."""
    out = []
    for teacher, aligner in zip(models, aligners, strict=True):
        al = aligner.align(input_ids)
        with torch.no_grad():
            z = teacher(input_ids=al.teacher_ids.to(device), use_cache=False).logits
        out.append(aligner.aligned_rows(z, al, input_ids.numel(), student_vocab, temperature, SPAN_TOP_K))
    return out
