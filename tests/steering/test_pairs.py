"""Contrast pair files: loading, validation errors, splits, and the shipped data sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steerlab.datasets.pairs import (
    ContrastPair,
    LabelledSet,
    PairError,
    PairSet,
    as_pairs,
    load_labelled,
    load_pairs,
    load_prompts,
    make_pairs,
)
from steerlab.steering.scores import vader_compound

DATA = Path(__file__).resolve().parents[2] / "data" / "steering"


def _write(tmp_path: Path, rows: list, name: str = "p.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_load_both_forms(tmp_path):
    with_prompt = _write(tmp_path, [
        {"prompt": "How was it?", "positive": "Great.", "negative": "Awful.", "id": 1},
        "# a comment", "",
        {"prompt": "And today?", "positive": "Lovely.", "negative": "Grim."},
    ], "a.jsonl")  # fmt: skip
    ps = load_pairs(with_prompt)
    assert len(ps) == 2 and ps.has_prompts
    assert ps[0] == ContrastPair("Great.", "Awful.", "How was it?")
    bare = load_pairs(_write(tmp_path, [{"positive": "x y", "negative": "y x"}], "b.jsonl"))
    assert not bare.has_prompts and bare[0].prompt is None


def test_fingerprint_tracks_content():
    a = make_pairs(["good", "nice"], ["bad", "mean"])
    b = make_pairs(["good", "nice"], ["bad", "mean"])
    c = make_pairs(["good", "nice"], ["bad", "cruel"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert len(a.fingerprint()) == 16


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([], "no contrast pairs"),
        ([{"positive": "a"}], r"unbalanced pair, missing \['negative'\]"),
        ([{"negative": "a"}], r"unbalanced pair, missing \['positive'\]"),
        ([{"positive": "a", "negative": ""}], "'negative' is empty"),
        ([{"positive": "a", "negative": 3}], "'negative' must be a string"),
        ([{"positive": "a", "negative": "a"}], "are the same text"),
        ([{"postive": "a", "negative": "b"}], r"unknown key\(s\) \['postive'\]"),
        (["[1, 2]"], "expected a JSON object"),
        (["{not json"], "invalid JSON"),
        (
            [{"positive": "a", "negative": "b"}, {"positive": "c", "negative": "d"},
             {"positive": "a", "negative": "b"}],
            r"p\.jsonl:3: duplicate of .*p\.jsonl:1",
        ),
        (
            [{"prompt": "q", "positive": "a", "negative": "b"}, {"positive": "c", "negative": "d"}],
            r"p\.jsonl:2: pairs with and without a prompt are mixed",
        ),
    ],
)  # fmt: skip
def test_bad_files_raise_clearly(tmp_path, rows, match):
    with pytest.raises(PairError, match=match):
        load_pairs(_write(tmp_path, rows))


def test_bad_memory_input():
    with pytest.raises(PairError, match="unbalanced pairs: 2 positive vs 1 negative"):
        make_pairs(["a", "b"], ["c"])
    with pytest.raises(PairError, match="no contrast pairs"):
        as_pairs([])
    with pytest.raises(PairError, match="no contrast pairs"):
        PairSet(())
    with pytest.raises(FileNotFoundError):
        load_pairs("/nonexistent/pairs.jsonl")


def test_split_is_seeded_and_disjoint():
    ps = make_pairs([f"good {i}" for i in range(10)], [f"bad {i}" for i in range(10)])
    tr, te = ps.split(0.3, seed=1)
    assert len(te) == 3 and len(tr) == 7
    assert set(tr.pairs).isdisjoint(te.pairs) and set(tr.pairs) | set(te.pairs) == set(ps.pairs)
    assert ps.split(0.3, seed=1) == (tr, te)
    with pytest.raises(PairError, match="at least 2 pairs"):
        make_pairs(["a"], ["b"]).split(0.5)


def test_labelled_sets(tmp_path):
    f = _write(tmp_path, [{"text": "great", "label": 1}, {"text": "awful", "label": False}])
    ls = load_labelled(f)
    assert ls.labels == (1, 0) and ls.prompts is None
    with pytest.raises(PairError, match="need both"):
        LabelledSet(("a", "b"), (1, 1))
    with pytest.raises(PairError, match="labels must be 0/1"):
        LabelledSet(("a", "b"), (1, 2))
    with pytest.raises(PairError, match="duplicates"):
        LabelledSet(("a", "a"), (1, 0))
    with pytest.raises(PairError, match="no labelled texts"):
        LabelledSet((), ())


def test_prompts_file(tmp_path):
    assert load_prompts(_write(tmp_path, [{"prompt": "Hi?"}, '"Bye?"'])) == ["Hi?", "Bye?"]
    with pytest.raises(PairError, match="duplicate of line 1"):
        load_prompts(_write(tmp_path, [{"prompt": "Hi?"}, {"prompt": "Hi?"}]))


@pytest.mark.parametrize("name", ["sentiment", "formality", "topic_ocean"])
def test_shipped_contrast_sets(name):
    ps = load_pairs(DATA / f"{name}.jsonl")  # validates: no duplicates, balanced, non-empty
    assert len(ps) >= 100 and ps.has_prompts
    # every text is used once: no pair reuses another pair's completion
    texts = [t for p in ps for t in (p.positive, p.negative)]
    assert len(set(texts)) == len(texts)


def test_shipped_neutral_prompts_and_keywords():
    prompts = load_prompts(DATA / "neutral_prompts.jsonl")
    assert len(prompts) >= 30
    kw = json.loads((DATA / "topic_ocean_keywords.json").read_text())["keywords"]
    ocean = load_pairs(DATA / "topic_ocean.jsonl")
    words = lambda t: set(t.lower().replace(",", " ").replace(".", " ").split())  # noqa: E731
    # the keyword score separates the topic set: every ocean side has a keyword, no other side
    assert all(words(p.positive) & set(kw) for p in ocean)
    assert not any(words(p.negative) & set(kw) for p in ocean)
    assert not any(words(p) & set(kw) for p in prompts)


def test_heldout_formality_pairs_are_disjoint_from_the_training_pairs():
    held = load_pairs(DATA / "formality_heldout.jsonl")
    train = load_pairs(DATA / "formality.jsonl")
    assert len(held) == 40 and held.has_prompts
    texts = lambda ps: {t for p in ps for t in (p.prompt, p.positive, p.negative)}  # noqa: E731
    assert not texts(held) & texts(train)  # the scorer never sees a training text


def test_task_frames_are_concept_free():
    frames = json.loads((DATA / "task_frames.json").read_text())["frames"]
    assert set(frames) == {"sentiment", "formality", "topic_ocean"}
    assert len(set(frames.values())) == 3 and all("{prompt}" in f for f in frames.values())
    kw = set(json.loads((DATA / "topic_ocean_keywords.json").read_text())["keywords"])
    framed = [f.format(prompt=p) for f in frames.values()
              for p in load_prompts(DATA / "neutral_prompts.jsonl")]  # fmt: skip
    words = lambda t: set(t.lower().replace(",", " ").replace(".", " ").replace(":", " ").split())  # noqa: E731
    # no framed prompt mentions the ocean, and the frames carry no sentiment (VADER 0)
    assert not any(words(p) & kw for p in framed)
    assert vader_compound(list(frames.values())).abs().max() == 0
