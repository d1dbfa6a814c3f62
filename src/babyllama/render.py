"""Page pieces shared by the run report and the sweep report: one style, one table writer per format.

Why here: both reports are read in a browser at a laptop's 1280 px and on a phone's ~420 px, and they
must read the same way — tables scroll sideways instead of being cut off, numbers align right and
words left, and a long appendix (the resolved config) is folded away.
"""

from __future__ import annotations

import html
import re

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
         "line-height:1.45}h1{font-size:1.7em;overflow-wrap:anywhere}"
         ".scroll{overflow-x:auto;margin:.5em 0 1.5em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}td.n{text-align:right;"
         "white-space:nowrap}th{background:#f3f3f3}li{margin:.3em 0}img{max-width:100%;display:block;margin:1em 0}"
         "pre{background:#f7f7f7;padding:1em;overflow:auto}summary{cursor:pointer;font-weight:600}"
         "td:first-child{white-space:nowrap}.scroll img{min-width:640px;margin:0}")

_NUMBER = re.compile(r"^[-+−]?[\d,.]+%?$|^\[[-+\d., ]+\]$|^–$|^\d+/\d+$")


def page_head(title: str) -> str:
    """The HTML document's start: charset, a viewport for phones, the shared style, the title."""
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>")


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A table in a sideways-scrolling box; numeric cells right-aligned (Markdown bold markers dropped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c.strip("*")) for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _cell(text: str) -> str:
    return f"<td class='n'>{html.escape(text)}</td>" if _NUMBER.match(text.strip()) else f"<td>{html.escape(text)}</td>"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def html_image(name: str, png_base64: str) -> str:
    """An embedded plot; on a narrow screen it keeps a readable width and scrolls sideways."""
    return f"<div class='scroll'><img alt='{html.escape(name)}' src='data:image/png;base64,{png_base64}'></div>"


def html_list(items: list[str]) -> str:
    """A bullet list; Markdown code ticks dropped (the HTML shows names as plain text)."""
    return "<ul>" + "".join(f"<li>{html.escape(x).replace('`', '')}</li>" for x in items) + "</ul>"


def folded(summary: str, body_html: str) -> str:
    """A section folded away until clicked (long appendices)."""
    return f"<details><summary>{html.escape(summary)}</summary>{body_html}</details>"


def teacher_gap_sentence(gap: float, *, where: str = "", basis: str = "") -> str:
    """The one wording of the distillation condition (control dev CE minus the best teacher's), for the run
    report and the sweep report alike: did the teachers have something to teach? ``where`` names a sweep
    setting (" (lr=...)"), ``basis`` says what the numbers are (" (control: mean over 3 seeds; ...)")."""
    if gap > 0:
        return (f"Condition{where}: the best teacher is {gap:.4f} nats/token below the control{basis}, so the teachers "
                "had something to teach (in the paper the gap was about 0.27).")
    return (f"Condition NOT met{where}: no teacher is better than the control (best teacher {-gap:.4f} nats/token "
            f"worse{basis}); distillation cannot be expected to help: train the teachers bigger or longer.")
