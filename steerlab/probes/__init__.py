"""Probes on captured activations: linear probes with control tasks, PLS, sweeps, AST probes.

Modules: :mod:`~steerlab.probes.linear` (logistic probes, control tasks, selectivity),
:mod:`~steerlab.probes.pls` (partial least squares subspaces for numeric attributes),
:mod:`~steerlab.probes.sweep` (one capture, every layer), :mod:`~steerlab.probes.numeric`
(readouts and causal tests of numeric attributes), :mod:`steerlab.probes.ast` (the AST
structural probe). Concept erasure is its own package, :mod:`steerlab.erasure`.
Import from the modules themselves; this package stays import-light.
"""
