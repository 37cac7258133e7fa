"""code_token_task's source segments equal ast.get_source_segment (split once per file)."""

from __future__ import annotations

import ast

from steerlab.datasets.corpora import code_corpus
from steerlab.probes.sweep import source_lines, source_segment


def test_segments_match_the_standard_library():
    checked = 0
    for doc in code_corpus(6):  # the first files include long ones (_collections_abc, ...)
        tree, lines = ast.parse(doc), source_lines(doc)
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt | ast.expr):
                assert source_segment(lines, node) == ast.get_source_segment(doc, node, padded=True)
                checked += 1
    assert checked > 500


def test_segments_with_odd_line_ends_tabs_and_multibyte_columns():
    src = "x = 1\r\ndef f():\r\n\treturn 'é' + \\\n  'ü'\rclass C:\f\n    y = [1,\n 2]\n"
    tree = ast.parse(src)
    lines = source_lines(src)
    assert "".join(lines) == src
    nodes = [n for n in ast.walk(tree) if hasattr(n, "end_col_offset")]
    assert len(nodes) > 8
    for node in nodes:
        assert source_segment(lines, node) == ast.get_source_segment(src, node, padded=True)
