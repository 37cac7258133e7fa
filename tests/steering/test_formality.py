"""The lexical formality measure: marker counts by hand, and the hand-written formality pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerlab.datasets.pairs import load_pairs
from steerlab.steering.formality import formality_markers, lexical_formality

DATA = Path(__file__).resolve().parents[2] / "data" / "steering"


def test_markers_counted_by_hand():
    # The(art) committee approved the(art) proposal: 5 words, 2 formal, 0 informal
    m = formality_markers("The committee approved the proposal.")
    assert (m.words, m.formal, m.informal) == (5, 2, 0)
    assert m.score == pytest.approx(2 / 5)
    # sure lol, gonna help ya: lower-case start (1) + lol, gonna, ya (3) = 4 informal of 5 words
    m = formality_markers("sure lol, gonna help ya")
    assert (m.words, m.formal, m.informal) == (5, 0, 4)
    assert m.score == pytest.approx(-4 / 5)
    # lower-case pronoun "i" counts twice (pronoun + case), a contraction once, "I" once;
    # "information" is latinate (>= 7 letters, -tion), "nation" too short to count
    m = formality_markers("I think i don't have the information about the nation.")
    # words: I think i don't have the information about the nation = 10
    # informal: I (1) + i (2) + don't (1) = 4; formal: the, information, about, the = 4
    assert (m.words, m.formal, m.informal) == (10, 4, 4)
    assert m.score == pytest.approx(0.0, abs=1e-12)  # equal integer counts: (4 - 4) / 10
    assert m.mean_word_length == pytest.approx(
        sum(
            map(
                len,
                ["I", "think", "i", "dont", "have", "the", "information", "about", "the", "nation"],
            )
        )
        / 10  # fmt: skip
    )


def test_empty_and_clipped():
    # an empty text scores 0, a clipped rate -1
    assert formality_markers("").score == pytest.approx(0.0, abs=1e-12)
    assert formality_markers("...").words == 0
    # every word informal plus a lower-case start: the rate exceeds 1 and is clipped
    assert formality_markers("lol omg").score == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(TypeError):
        lexical_formality("one string")


def test_formal_sides_of_the_pairs_score_higher():
    # the word lists were not fitted to these pairs; the module docstring reports these counts
    pairs = load_pairs(DATA / "formality.jsonl")
    formal = lexical_formality([p.positive for p in pairs])
    casual = lexical_formality([p.negative for p in pairs])
    assert len(pairs) == 108
    assert int((formal > casual).sum()) == 100
    assert int((formal == casual).sum()) == 5
    assert float(formal.mean()) > 0 > float(casual.mean())
