"""Per-source cleaning of BabyLM text, following the behaviour of the reference `mrclean.py`.

The reference wraps documents in start/end/padding markers, but all three are empty strings, so only the
regex edits below reach the training text. Each cleaner maps one file's text to its cleaned text:

- wikipedia: ``= = = Heading = = =`` lines lose their markup (and their line break, as in the reference),
  every line is stripped, and the text's leading line break is dropped.
- qed: lines that are mostly upper case (>= 50 %, ignoring ``(...)`` and ``.!?``) get ``l`` -> ``I`` and are
  sentence-cased; every line is stripped.
- bnc_spoken, aochildes (2024: childes): runs of spaces/tabs/NBSP collapse to one space; a space before
  ``.,;!?`` is removed. cbt additionally joins ``word 's``/``word 't``-style apostrophe suffixes.
- open_subtitles: every line containing "subtitle" (any case) is deleted.
- gutenberg, switchboard, children_stories, simple_wikipedia (2024: simple_wiki): unchanged.

Sources with any other name pass through unchanged and are reported as ``unknown``.

Three deliberate deviations make every cleaner idempotent (cleaning cleaned text changes nothing) and total:
the reference drops wikipedia's first character unconditionally (we drop leading line breaks, which is what
that character is in the BabyLM file); its qed rule divides by zero on lines made only of ``.!?``/``(...)``
(we leave them alone) and can change a line again on a second pass (we apply it until the line is stable);
its cbt apostrophe rule misses the second of two overlapping matches (we use look-arounds). Bump
``CLEANING_VERSION`` whenever the output of any cleaner changes: prepared data records it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePath

CLEANING_VERSION = 1

_HEADING = re.compile(r"= = = (.+?) = = =\n")
_SPACES = re.compile(r"[ \t\u00A0]+")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t\u00A0]([.,;!?])")
_SPACE_BEFORE_APOSTROPHE = re.compile(r"(?<=\w)[ \t\u00A0](?=['’]\w)")
_QED_IGNORED = re.compile(r"\(.*?\)|[.!?]")
_QED_SENTENCE = re.compile(r"([.!?]\s*)")
_SUBTITLE = re.compile(r"subtitle", re.IGNORECASE)


def clean_wikipedia(text: str) -> str:
    text = _HEADING.sub(r"\1", text)
    return "\n".join(line.strip() for line in text.splitlines()).lstrip("\n")


def _unshout(line: str) -> str:
    """Sentence-case a mostly upper-case subtitle line, fixing OCR's 'l' for 'I'."""
    body = _QED_IGNORED.sub("", line)
    if not body or sum(c.isupper() for c in body) / len(body) < 0.5:
        return line
    return "".join(part.capitalize() for part in _QED_SENTENCE.split(line.replace("l", "I")))


def clean_qed(text: str) -> str:
    lines = []
    for line in text.splitlines():
        for _ in range(8):  # reaches a fixed point in at most three passes; the bound is only a guard
            fixed = _unshout(line).strip()
            if fixed == line:
                break
            line = fixed
        lines.append(line)
    return "\n".join(lines)


def clean_extra_spaces(text: str) -> str:
    text = _SPACES.sub(" ", text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def clean_cbt(text: str) -> str:
    return _SPACE_BEFORE_APOSTROPHE.sub("", clean_extra_spaces(text))


def clean_open_subtitles(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not _SUBTITLE.search(line))


def unchanged(text: str) -> str:
    return text


#: cleaner name -> function; the name is what the manifest records for each source.
CLEANERS: dict[str, Callable[[str], str]] = {
    "wikipedia": clean_wikipedia,
    "qed": clean_qed,
    "extra_spaces": clean_extra_spaces,
    "cbt": clean_cbt,
    "open_subtitles": clean_open_subtitles,
    "unchanged": unchanged,
    "unknown": unchanged,
}

#: Source name (BabyLM 2023 and 2024 releases, plus the embedded demo corpus) -> cleaner name.
SOURCE_CLEANERS: dict[str, str] = {
    "wikipedia": "wikipedia",
    "qed": "qed",
    "bnc_spoken": "extra_spaces",
    "aochildes": "extra_spaces",
    "childes": "extra_spaces",  # BabyLM 2024's name for the CHILDES transcripts (aochildes in 2023)
    "cbt": "cbt",
    "open_subtitles": "open_subtitles",
    "gutenberg": "unchanged",
    "switchboard": "unchanged",
    "children_stories": "unchanged",
    "simple_wikipedia": "unchanged",
    "simple_wiki": "unchanged",  # BabyLM 2024's name for simple_wikipedia
    "kjv": "unchanged",  # the embedded King James Bible demo corpus (not BabyLM data)
}


def cleaner_name(source: str) -> str:
    """The cleaner for a source, chosen by its file stem ('qed' for qed.train, wikipedia.txt, ...)."""
    return SOURCE_CLEANERS.get(PurePath(source).stem.lower(), "unknown")


def clean(source: str, text: str) -> str:
    return CLEANERS[cleaner_name(source)](text)
