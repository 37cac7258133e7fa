"""Steering methods: vectors, contrast pairs, MSRS, intervention training, generation, evals.

    >>> from steerlab.steering.vectors import fit_vector
    >>> from steerlab.steering.generate import generate
    >>> vec = fit_vector(handle, "data/steering/sentiment.jsonl", "resid_post.9", chat=True)
    >>> generate(handle, ["Tell me about your weekend."], [vec.intervention(9, alpha=0.1)])

The edits themselves (the algebra, ``steer()``, position rules) live one layer below, in
:mod:`steerlab.interventions` and :mod:`steerlab.positions`. Modules here:
:mod:`~steerlab.steering.vectors` (mean-difference and PCA vectors),
:mod:`~steerlab.steering.pairs` (reading contrast pairs), :mod:`~steerlab.steering.msrs`
(multi-subspace representation steering), :mod:`~steerlab.steering.train` (training
interventions such as LoReFT and MSRS), :mod:`~steerlab.steering.generate` (steered decoding),
:mod:`~steerlab.steering.evals` and :mod:`~steerlab.steering.scores` (concept, fluency,
relevance), :mod:`~steerlab.steering.gguf` (llama.cpp control vectors),
:mod:`~steerlab.steering.layer_sweep`.
"""

from steerlab.steering.msrs import MSRS, MSRSLoss, init_bases

__all__ = ["MSRS", "MSRSLoss", "init_bases"]
