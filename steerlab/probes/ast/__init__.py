"""The AST structural probe (syntax trees from hidden states).

Modules: :mod:`~steerlab.probes.ast.data` (code snippets and their syntax trees),
:mod:`~steerlab.probes.ast.trees` (tree ↔ distance/depth encodings, labelled F1),
:mod:`~steerlab.probes.ast.features` (leaf features from a model), :mod:`~steerlab.probes.ast.probe`
(the probe's loss and training; re-exports the rest), :mod:`~steerlab.probes.ast.artifact` (the
trained probe) and :mod:`~steerlab.probes.ast.evaluate` (trees rebuilt and scored by F1).
"""
