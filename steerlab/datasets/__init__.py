"""Every data loader: offline corpora, token chunks, and the curated sets under ``data/``.

>>> from steerlab.datasets.corpora import chunk_tokens, load_texts
>>> chunks = chunk_tokens(handle.tokenizer, load_texts("prose"), seq_len=128, n_tokens=20_000)
"""

from steerlab.datasets.corpora import (
    NAMED_CORPORA,
    TokenChunks,
    TokenContexts,
    chunk_tokens,
    code_corpus,
    code_files,
    corpus_fingerprint,
    interleave,
    load_texts,
    prose_corpus,
    stdlib_dir,
    token_contexts,
)

__all__ = [
    "NAMED_CORPORA",
    "TokenChunks",
    "TokenContexts",
    "chunk_tokens",
    "code_corpus",
    "code_files",
    "corpus_fingerprint",
    "interleave",
    "load_texts",
    "prose_corpus",
    "stdlib_dir",
    "token_contexts",
]
