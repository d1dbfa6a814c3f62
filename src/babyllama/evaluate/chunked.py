"""Token ids of many sentences from their words: each distinct space-separated chunk is tokenized once.

Why: the full BLiMP is 134,000 sentences but only a few thousand distinct words, and a byte-level BPE
tokenizer spends most of its time in its pre-tokenizing regular expression (about 6 s for the 134,000
sentences on our 2-core machine under load, against well under a second by chunks).

When it is exact: a byte-level BPE (GPT-2's scheme, babyllama's own tokenizers) splits a text with its
regular expression into pieces that never span a space followed by a non-space (a space is kept with the
word after it), and encodes each piece on its own. So for a text whose only whitespace is single spaces,
the ids are those of " word" chunks in turn, provided the normalizer works character by character across
a space (none, NFC, NFKC) and no added token contains whitespace. Any other tokenizer or text goes
through the tokenizer whole; and a sample of the texts is also tokenized whole and must match, or every
text is.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from typing import Any

_SAFE_NORMALIZERS = (None, "NFC", "NFKC")
_CHUNK = re.compile(r" ?[^ ]+")  # a word with the space before it
_OTHER_SPACE = re.compile(r"\s")
_NOT_SIMPLE = re.compile(r"[^\S ]|  | $|^$")  # other whitespace, a double or trailing space, or nothing
CHECKED = 256  # texts tokenized both ways to confirm the chunked ids


def chunkable(backend: Any) -> bool:
    """Whether ``backend`` (a ``tokenizers.Tokenizer``) encodes single-spaced text chunk by chunk (see above)."""
    spec = json.loads(backend.to_str())
    pre, norm = spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    return (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and (norm is None or norm.get("type") in _SAFE_NORMALIZERS)
            and spec.get("model", {}).get("type") == "BPE"
            and not any(_OTHER_SPACE.search(t.get("content", "")) for t in spec.get("added_tokens") or []))


def encode_chunked(backend: Any, texts: list[str]) -> list[list[int]] | None:
    """The ids of each text without special tokens, or None when ``backend`` is not chunkable or the sample check
    fails (the caller then tokenizes the texts whole)."""
    if not chunkable(backend):
        return None
    whole = [i for i, t in enumerate(texts) if _NOT_SIMPLE.search(t)]  # texts with only single spaces are chunked
    pieces = [_CHUNK.findall(t) for t in texts]
    for i in whole:
        pieces[i] = []
    distinct = sorted({c for p in pieces for c in p})
    ids = dict(zip(distinct, (e.ids for e in backend.encode_batch(distinct, add_special_tokens=False)), strict=True))
    out = [list(chain.from_iterable(map(ids.__getitem__, p))) for p in pieces]
    if whole:
        for i, e in zip(whole, backend.encode_batch([texts[i] for i in whole], add_special_tokens=False), strict=True):
            out[i] = e.ids
    step = max(1, len(texts) // CHECKED)
    sample = list(range(0, len(texts), step))
    check = backend.encode_batch([texts[i] for i in sample], add_special_tokens=False)
    if any(out[i] != e.ids for i, e in zip(sample, check, strict=True)):
        return None
    return out
