"""Probes and linear concept erasure on captured activations.

Modules: :mod:`steerlab.probes.erasure` (the shared affine eraser, LEACE, erasure reports),
:mod:`steerlab.probes.rlace` (R-LACE), :mod:`steerlab.probes.inlp` (INLP). Import from the
modules themselves; this package stays import-light.
"""
