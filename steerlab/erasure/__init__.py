"""Linear concept erasure: LEACE, R-LACE and INLP, their evaluation, and in-model scrubbing.

Modules: :mod:`~steerlab.erasure.leace` (the shared affine eraser and LEACE, closed form),
:mod:`~steerlab.erasure.rlace` (R-LACE, the minimax game), :mod:`~steerlab.erasure.inlp`
(iterative nullspace projection), :mod:`~steerlab.erasure.evaluation` (fresh probes after
erasure, majority baselines), :mod:`~steerlab.erasure.scrub` (``EraserEdit``: an eraser as an
intervention inside the model, multi-layer scrubbing and its language-modelling cost).
Import from the modules themselves; this package stays import-light.
"""
