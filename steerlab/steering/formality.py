"""A lexical formality measure: no model, no tagger, no fitted parameter.

    >>> lexical_formality(["The committee approved the proposal.", "sure lol, gonna help ya"])
    tensor([ 0.4000, -0.8000], dtype=torch.float64)

It is the independent check beside the projection scorer of the steering evaluations
(:class:`steerlab.steering.evals.ProjectionConcept`), which is fitted on activations and can
reward degenerate text. Each word of a text counts as a *formal* or an *informal* marker (or
neither), and, as Heylighen & Dewaele's score, per word:

    F_lex = clip((n_formal − n_informal) / n_words, −1, 1),   0 for a text without words.

**Sources.** Heylighen & Dewaele's F-score (1999, "Formality of language: definition,
measurement and behavioral determinants"; Foundations of Science 7, 2002)
``F = (noun + adj + prep + article − pronoun − verb − adverb − interjection + 100) / 2`` over
part-of-speech frequencies needs a tagger, which is not available offline here. This measure
keeps the classes a closed word list identifies: **articles and prepositions** (formal) and
**pronouns and interjections** (informal; only first and second person, Biber's 1988
"involved" features, since third-person pronouns are as common in formal prose). To those it
adds markers that Pavlick & Tetreault (2016, "An empirical analysis of formality in online
communication", TACL) found predictive of human formality ratings: **contractions** and
**slang / chat abbreviations** (informal), **capitalisation** (a sentence that starts
lower-case, and a lower-case pronoun "i", are informal), and **latinate words** (formal: words of at least 7 letters ending in a latinate suffix such as -tion, -ment,
-ity, -ance). The word lists below were written for this measure from those papers' categories
and common chat usage, not derived from steerlab's pair files (which naturally share common
words such as "lol" with them). :func:`formality_markers` also reports the mean word length,
another of Pavlick & Tetreault's features, for inspection; it is not part of ``F_lex``.

Limits: "to" counts as a preposition also before an infinitive (a tagger would not count it),
a word list misses slang it does not know, and a text without markers scores 0 whatever its
register. ``F_lex`` ranks texts; its absolute value has no calibrated meaning. On the 108
hand-written pairs of ``data/steering/formality.jsonl`` the formal side scores higher than the
casual side in 100 pairs, equal in 5 (tested).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["FormalityMarkers", "formality_markers", "lexical_formality"]


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


ARTICLES = frozenset({"a", "an", "the"})
PREPOSITIONS = _wordset(
    "about above across after against along amid among amongst around at before behind below "
    "beneath beside besides between beyond by concerning despite down during except for from "
    "in inside into near of off on onto out outside over past per regarding since through "
    "throughout till to toward towards under underneath until unto upon via with within "
    "without"
)
FIRST_SECOND_PERSON = _wordset(
    "i me my mine myself we us our ours ourselves you your yours yourself yourselves u ur ya y'all"
)
INTERJECTIONS = _wordset(
    "oh ah aw aww wow hey hi oops ugh yay hmm hmmm haha hahaha hehe whoa yikes meh ooh "
    "yo huh duh phew"
)
SLANG = _wordset(
    # chat abbreviations and colloquial forms (Pavlick & Tetreault's "informal words")
    "lol lmao rofl omg btw idk imo imho tbh brb ttyl thx thnx ty np pls plz ppl rn tmrw tmr "
    "tonite nite cya gonna wanna gotta kinda sorta dunno lemme gimme cuz coz cos yeah yep yup "
    "yea nope nah ok okay k kk cool awesome dude bro guys stuff super totally pretty "
    "dont didnt doesnt isnt wasnt cant wont im ive youre theyre thats whats gotcha ain't "
    "xoxo bday fav fave sry hrs prob w n"
)
LATINATE_SUFFIXES = (
    "tion", "tions", "sion", "sions", "ment", "ments", "ity", "ities", "ance", "ances",
    "ence", "ences", "ous", "ive", "ible", "able", "ial", "ual", "ize", "ise", "ization",
)  # fmt: skip
LATINATE_MIN_LETTERS = 7
"""Short words with these endings are mostly native ("mention" counts, "nice"/"give" do not)."""

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_LOWER_START = re.compile(r"(?:^|[.!?]\s+)[a-z]")  # a sentence that starts lower-case
_CONTRACTION = re.compile(r"^[a-z]+['’](?:t|s|re|ll|m|ve|d)$")


class FormalityMarkers(NamedTuple):
    """Marker counts of one text (see the module docstring)."""

    words: int
    """Words (letter runs, an apostrophe inside allowed)."""
    formal: int
    """Articles + prepositions + latinate words."""
    informal: int
    """First/second-person pronouns + contractions + slang + interjections + sentences that
    start lower-case + a lower-case pronoun "i" (which counts twice: pronoun and case)."""
    mean_word_length: float
    """Mean letters per word (0 for a text without words)."""

    @property
    def score(self) -> float:
        """``F_lex = clip((formal − informal) / words, −1, 1)``; 0 for a text without words."""
        if not self.words:
            return 0.0
        return max(-1.0, min(1.0, (self.formal - self.informal) / self.words))


def _is_latinate(w: str) -> bool:
    return len(w) >= LATINATE_MIN_LETTERS and w.endswith(LATINATE_SUFFIXES)


def formality_markers(text: str) -> FormalityMarkers:
    """Count the formal and informal markers of ``text`` (see the module docstring)."""
    raw = _WORD.findall(text)
    formal = 0
    informal = len(_LOWER_START.findall(text.strip()))
    for tok in raw:
        w = tok.lower().replace("’", "'")
        if tok == "i":  # the pronoun written lower-case: an informal marker of its own
            informal += 2
        elif w in FIRST_SECOND_PERSON or w in INTERJECTIONS or w in SLANG:
            informal += 1
        elif _CONTRACTION.match(w):
            # "don't" = do + not: one informal marker; "the cat's" (possessive) is rarer in the
            # short replies scored here than "it's"/"that's", and is counted too
            informal += 1
        elif w in ARTICLES or w in PREPOSITIONS or _is_latinate(w):
            formal += 1
    letters = sum(len(t.replace("'", "").replace("’", "")) for t in raw)
    return FormalityMarkers(len(raw), formal, informal, letters / len(raw) if raw else 0.0)


def lexical_formality(texts: Sequence[str]) -> Float[Tensor, " n"]:
    """``F_lex`` of each text (float64, in ``[-1, 1]``; 0 for a text without markers)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    return torch.tensor([formality_markers(t).score for t in texts], dtype=torch.float64)
