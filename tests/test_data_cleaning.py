"""Per-source cleaners (reference mrclean.py behaviour) on small handwritten inputs."""

from __future__ import annotations

import pytest

from babyllama.data.cleaning import (
    CLEANERS,
    CLEANING_VERSION,
    clean,
    clean_cbt,
    clean_extra_spaces,
    clean_open_subtitles,
    clean_qed,
    clean_wikipedia,
    cleaner_name,
)


def test_wikipedia_drops_heading_markup_strips_lines_and_leading_break():
    text = "\n = Valkyria = \n= = = Gameplay = = =\n  The game is   played.  \n\n Second paragraph. \n"
    # the heading loses its markup and its line break (joining the next line), as in the reference
    assert clean_wikipedia(text) == "= Valkyria =\nGameplay  The game is   played.\n\nSecond paragraph."


def test_qed_sentence_cases_shouting_lines_and_fixes_l_for_i():
    text = "HELLO THERE. HOW ARE YOU?\nl AM FINE!\nThis line is Normal.\n  (APPLAUSE) OK  \n...\n"
    assert clean_qed(text).split("\n") == [
        "Hello there. How are you?",
        "I am fine!",
        "This line is Normal.",
        "(applause) ok",
        "...",  # nothing but punctuation: left alone (the reference divides by zero here)
    ]


def test_qed_leaves_mostly_lowercase_lines_and_strips():
    assert clean_qed("  we saw NASA and the USA  \n") == "we saw NASA and the USA"


def test_extra_spaces_collapse_runs_and_remove_space_before_punctuation():
    assert clean_extra_spaces("Hello \t\u00a0 world , you ; there !\nOK  ?") == "Hello world, you; there!\nOK?"


def test_bnc_spoken_and_aochildes_and_childes_use_extra_spaces():
    text = "what  is that ?\n"
    for source in ("bnc_spoken", "aochildes", "childes"):
        assert cleaner_name(source) == "extra_spaces"
        assert clean(source, text) == "what is that?\n"


def test_cbt_joins_apostrophe_suffixes():
    assert clean_cbt("The cat 's hat , they don 't know .") == "The cat's hat, they don't know."
    assert clean_cbt("Tom ’s dog x 'y 'z") == "Tom’s dog x'y'z"  # overlapping matches are all joined


def test_open_subtitles_deletes_subtitle_lines_any_case():
    text = "Hello.\nSubtitles by Someone\nGood bye.\n-= SUBTITLE ripped =-\nend\nsubtitle at the end"
    assert clean_open_subtitles(text) == "Hello.\nGood bye.\nend"


@pytest.mark.parametrize("source", ["gutenberg", "switchboard", "children_stories", "simple_wikipedia", "simple_wiki"])
def test_pass_through_sources_are_unchanged(source):
    text = "  A:  odd   spacing , kept .\n= = = Not a heading here = = =\nSUBTITLE stays\n"
    assert cleaner_name(source) == "unchanged"
    assert clean(source, text) == text


def test_unknown_sources_pass_through_and_are_named_unknown():
    text = "anything  goes .\n"
    assert cleaner_name("my_notes.txt") == "unknown"
    assert clean("my_notes.txt", text) == text


def test_cleaner_is_chosen_by_file_stem():
    assert cleaner_name("qed") == cleaner_name("sub/qed.txt") == "qed"
    assert cleaner_name("wikipedia.train") == "wikipedia"


MESSY = [
    "\n\n = = Title = = \n= = = Head = = =\n  body  text .  \n",
    "HELLO. l SAW IT! A. BL.\n  AB c  \n(LAUGHS) YES\n..?\n",
    "a  b\t,c \u00a0; d !\ncat 's x 'y 'z\nhe ’s\n",
    "Subtitle line\nkeep me\nSUBTITLES\n",
    "  plain   text  \n",
]


@pytest.mark.parametrize("cleaner", sorted(CLEANERS))
def test_every_cleaner_is_idempotent(cleaner):
    fn = CLEANERS[cleaner]
    for text in MESSY:
        once = fn(text)
        assert fn(once) == once, (cleaner, text)


def test_cleaning_version_is_an_integer():
    assert isinstance(CLEANING_VERSION, int) and CLEANING_VERSION >= 1
