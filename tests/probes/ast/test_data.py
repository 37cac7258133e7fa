"""Tests for steerlab.probes.ast.data: cleaning, splitting, counted skips, token alignment.

Independent references: CPython's own ``ast`` and ``tokenize`` (the cleaned code must be valid
Python and its leaves must be exactly CPython's tokens), a brute-force O(leaves x tokens)
overlap for the alignment, and the embedded model's real tokenizer offsets.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.datasets.corpora import stdlib_dir
from steerlab.probes.ast.data import (
    COUNT_KEYS,
    DROP_REASONS,
    extract_snippets,
    leaf_token_alignment,
    load_ast_snippets,
    split_of,
    straddling_tokens,
)

# Small, varied standard-library modules: classes, nested functions, decorators, f-strings.
STDLIB_MODULES = (
    "textwrap.py",
    "json/decoder.py",
    "shlex.py",
    "string.py",
    "difflib.py",
    "argparse.py",
    "ast.py",
)
_LAYOUT_TOKENS = {
    tokenize.NEWLINE,
    tokenize.NL,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
    tokenize.COMMENT,
}


@pytest.fixture(scope="module")
def dataset():
    return load_ast_snippets(files=[stdlib_dir() / m for m in STDLIB_MODULES], max_leaves=200)


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer alone (the model's weights are not needed here)."""
    from transformers import AutoTokenizer

    from steerlab.models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct")[1])


@pytest.fixture(scope="module")
def snippets(dataset):
    return dataset.train + dataset.dev + dataset.test


# --------------------------------------------------------------------------- cleaning


SOURCE = '''
class A:
    @property
    def f(self, x="é"):  # a comment
        """Doc
        string."""
        # a full-line comment

        y = """keep
  this
        as is"""
        "a bare string statement"
        z = (1,  # another
             2)
        return x + \\
            y

    async def g(self):
        """only a docstring"""

def h():
    def inner(): pass
    return inner
'''


def test_cleaning_by_hand():
    snippets, counts = extract_snippets(SOURCE, "demo.py")
    assert counts == {"functions": 4, "kept": 3, "empty_body": 1}
    f, h, inner = snippets
    assert f.code == (
        'def f(self, x="é"):\n'
        '    y = """keep\n  this\n        as is"""\n'
        "    z = (1,\n         2)\n"
        "    return x + \\\n        y"
    )
    assert (f.name, f.line, f.path) == ("f", 4, "demo.py")
    # the multi-line string is one leaf; spans are characters (é is 2 bytes in UTF-8)
    assert '"é"' in f.leaves
    assert '"""keep\n  this\n        as is"""' in f.leaves
    assert "\\\n" not in "".join(f.leaves)  # a line continuation is layout, not a leaf
    assert h.code == "def h():\n    def inner(): pass\n    return inner"
    assert inner.code == "def inner(): pass"


def test_real_snippets_are_clean_python_whose_leaves_are_cpython_tokens(snippets):
    assert len(snippets) > 100
    for s in snippets:
        assert s.code.startswith(("def ", "async def ")), s.code[:40]
        tree = ast.parse(s.code)  # CPython accepts the cleaned text
        assert isinstance(tree.body[0], ast.FunctionDef | ast.AsyncFunctionDef)
        assert ast.get_docstring(tree.body[0]) is None
        assert "\n\n" not in _outside_strings(s)  # blank lines only inside string literals
        assert all(line == line.rstrip() for line in _outside_strings(s).split("\n"))
        labels = s.tree.leaves()
        assert "comment" not in labels and "string_content" not in labels
        assert len(labels) == len(s.leaf_spans) <= 200
        assert all(s.code[a:b].strip() == s.code[a:b] != "" for a, b in s.leaf_spans)
        if sys.version_info >= (3, 12) and "f'" in s.code + 'f"':
            continue  # 3.12 tokenizes f-strings into pieces; tree-sitter keeps one string
        toks = io.StringIO(s.code).readline
        expected = [
            t.string for t in tokenize.generate_tokens(toks) if t.type not in _LAYOUT_TOKENS
        ]
        # tree-sitter makes "not in" and "is not" one terminal each; CPython two tokens.
        got = [
            w
            for lab, txt in zip(labels, s.leaves)
            for w in (txt.split() if lab != "string" else [txt])
        ]
        assert got == expected


def _outside_strings(s) -> str:
    """The snippet's code with every string leaf replaced by ``S``."""
    out, pos = [], 0
    for label, (a, b) in zip(s.tree.leaves(), s.leaf_spans):
        if label == "string":
            out += [s.code[pos:a], "S"]
            pos = b
    return "".join(out) + s.code[pos:]


# --------------------------------------------------------------------------- dataset


def test_counts_add_up(dataset):
    c = dataset.counts
    assert set(COUNT_KEYS) <= set(c)
    assert c["files"] == len(STDLIB_MODULES)
    assert c["functions"] == c["kept"] + sum(c[k] for k in DROP_REASONS)
    assert (
        c["kept"]
        == c["train"] + c["dev"] + c["test"]
        == len(dataset.train + dataset.dev + dataset.test)
    )
    assert c["too_many_leaves"] > 0  # difflib and argparse have long functions


def test_no_duplicates(snippets):
    codes = [s.code for s in snippets]
    assert len(codes) == len(set(codes))


def test_splits_do_not_share_module_files():
    ds = load_ast_snippets(max_snippets=150, max_leaves=64)
    files = {name: {s.path for s in getattr(ds, name)} for name in ("train", "dev", "test")}
    assert not (
        files["train"] & files["dev"]
        or files["train"] & files["test"]
        or files["dev"] & files["test"]
    )
    for name, paths in files.items():
        assert all(split_of(p) == name for p in paths)
    assert ds.counts["kept"] == 150
    assert not any(p.startswith("/") for p in files["train"])  # paths relative to the stdlib


def test_split_of_is_deterministic_and_follows_fractions():
    paths = [f"pkg/mod{i}.py" for i in range(2000)]
    splits = [split_of(p) for p in paths]
    assert splits == [split_of(p) for p in paths]
    # binomial(2000, 0.8): sd ≈ 18 files, so ±100 is > 5 sd
    assert abs(splits.count("train") - 1600) < 100
    assert [split_of(p, seed=1) for p in paths] != splits
    assert {split_of(p, fractions=(1.0, 0.0, 0.0)) for p in paths} == {"train"}


def test_token_limit_is_counted(tokenizer):
    files = [stdlib_dir() / "textwrap.py"]
    ds = load_ast_snippets(files=files, tokenizer=tokenizer, max_tokens=40)
    assert ds.counts["too_many_tokens"] > 0
    for s in ds.train + ds.dev + ds.test:
        assert len(tokenizer(s.code, add_special_tokens=False)["input_ids"]) <= 40


# --------------------------------------------------------------------------- bad input


def test_code_that_does_not_parse_is_a_counted_skip():
    snippets, counts = extract_snippets("def f(:\n    pass\n\ndef g():\n    return 1\n")
    assert [s.name for s in snippets] == ["g"]
    assert counts["syntax_error"] == 1 and counts["functions"] == 2


def test_no_functions_and_empty_bodies_give_no_snippets():
    assert extract_snippets("x = 1\n") == ([], {})
    snippets, counts = extract_snippets('def f():\n    """only a docstring"""\n')
    assert snippets == [] and counts["empty_body"] == 1


def test_undecodable_and_unparseable_files_are_counted(tmp_path):
    (tmp_path / "latin.py").write_bytes(b"def f():\n    return '\xe9'\n")
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n")
    (tmp_path / "good.py").write_text("def g(a):\n    return a\n")
    ds = load_ast_snippets(files=sorted(tmp_path.iterdir()))
    c = ds.counts
    assert (c["files"], c["files_undecodable"], c["syntax_error"], c["kept"]) == (3, 1, 1, 1)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="fractions"):
        load_ast_snippets(fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="max_leaves"):
        load_ast_snippets(max_leaves=1)
    with pytest.raises(ValueError, match="max_snippets"):
        load_ast_snippets(max_snippets=0)


# --------------------------------------------------------------------------- token alignment


def test_alignment_by_hand():
    # text "f(a):" with leaves f ( a ) : and tokens BOS "f(" "a" "):"
    leaves = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    offsets = [(0, 0), (0, 2), (2, 3), (3, 5)]
    assert leaf_token_alignment(leaves, offsets) == [[1], [1], [2], [3], [3]]
    assert straddling_tokens(leaves, offsets) == [1, 3]
    # a token's own leading space overlaps no other leaf: "x = y" as "x" " =" " y"
    assert leaf_token_alignment(
        [(0, 1), (2, 3), (4, 5)], torch.tensor([[0, 1], [1, 3], [3, 5]])
    ) == [[0], [1], [2]]
    assert straddling_tokens([(0, 1), (2, 3), (4, 5)], [(0, 1), (1, 3), (3, 5)]) == []


def test_leaf_without_tokens_raises():
    with pytest.raises(ValueError, match="overlap no token"):
        leaf_token_alignment([(0, 1), (5, 6)], [(0, 1), (1, 3)])


def _brute(leaves, offsets):
    return [[j for j, (a, b) in enumerate(offsets) if b > a and a < e and b > s] for s, e in leaves]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=30),
    st.lists(st.integers(1, 5), min_size=1, max_size=40),
    st.data(),
)
def test_alignment_matches_brute_force(leaf_widths, token_widths, data):
    pos, leaves = 0, []
    for w in leaf_widths:
        gap = data.draw(st.integers(0, 2))
        leaves.append((pos + gap, pos + gap + w))
        pos += gap + w
    pos, offsets = 0, [(0, 0)]
    for w in token_widths:
        offsets.append((pos, pos + w))
        pos += w
    expected = _brute(leaves, offsets)
    if any(not hit for hit in expected):
        with pytest.raises(ValueError):
            leaf_token_alignment(leaves, offsets)
    else:
        assert leaf_token_alignment(leaves, offsets) == expected
    n = [sum(j in hit for hit in expected) for j in range(len(offsets))]
    assert straddling_tokens(leaves, offsets) == [j for j, k in enumerate(n) if k > 1]


def test_alignment_with_the_real_tokenizer(tokenizer, snippets):
    tok = tokenizer
    n_straddle = n_tokens = 0
    for s in snippets[:50]:
        enc = tok(s.code, add_special_tokens=False, return_offsets_mapping=True)
        aligned = leaf_token_alignment(s.leaf_spans, enc["offset_mapping"])
        assert aligned == _brute(s.leaf_spans, enc["offset_mapping"])
        # every token with text other than layout (whitespace, a backslash continuation) has a leaf
        covered = {j for hit in aligned for j in hit}
        for j, (a, b) in enumerate(enc["offset_mapping"]):
            assert j in covered or not s.code[a:b].strip(" \t\n\\")
        n_straddle += len(straddling_tokens(s.leaf_spans, enc["offset_mapping"]))
        n_tokens += len(enc["input_ids"])
    assert 0 < n_straddle < 0.25 * n_tokens  # BPE merges like "()" straddle; most tokens do not
