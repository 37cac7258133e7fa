"""SAEs that normalise each activation before encoding and undo it after decoding.

SAELens's ``normalize_activations`` options ``"constant_norm_rescale"`` and ``"layer_norm"``
rescale each token by a statistic of that token, which no change of the weights can express.
:class:`NormalizedSae` wraps any steerlab SAE with that per-token map, exactly as SAELens's
``run_time_activation_norm_fn_in`` / ``_out`` do:

- ``constant_norm_rescale``: ``x_n = c·x`` with ``c = sqrt(d_in) / ‖x‖``; ``x̂ = x̂_n / c``;
- ``layer_norm``: ``x_n = (x − μ) / (σ + ε)`` with ``μ``, ``σ`` the mean and the (unbiased,
  as ``torch.std``) standard deviation over ``d_in``, ``ε = 1e-5``; ``x̂ = x̂_n · σ + μ``
  (SAELens multiplies back by ``σ``, not ``σ + ε``; so does this class).

The other options (a constant scale, an affine whitening) are folded into the weights when the
file is read (:mod:`steerlab.saes.io.common`), so they need no wrapper.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerlab.saes.sae import Sae, SaeOutput, _as_batch, _fvu

NormMode = Literal["constant_norm_rescale", "layer_norm"]
NORM_MODES = ("constant_norm_rescale", "layer_norm")
LAYER_NORM_EPS = 1e-5
"""SAELens's ``eps`` in ``run_time_activation_ln_in``."""


class NormalizedSae(nn.Module):
    """An SAE applied to per-token normalised activations (see the module).

    It offers what code that *uses* an SAE needs (:meth:`encode_dense`, :meth:`reconstruct`,
    ``forward`` with an :class:`~steerlab.saes.sae.SaeOutput`, ``cfg``, ``d_in``, ``d_sae``,
    the weights) and is saved with :func:`steerlab.saes.io.save_saelens`, which records the
    mode. Latents are those of the inner SAE on the normalised input.

    Args:
        sae: the inner SAE, trained on normalised activations.
        mode: ``"constant_norm_rescale"`` or ``"layer_norm"``.
    """

    def __init__(self, sae: Sae, mode: NormMode) -> None:
        super().__init__()
        if mode not in NORM_MODES:
            raise ValueError(f"unknown normalisation {mode!r}; one of {NORM_MODES}")
        self.sae, self.mode = sae, mode

    # what users of an SAE read
    cfg = property(lambda self: self.sae.cfg)
    d_in = property(lambda self: self.sae.d_in)
    d_sae = property(lambda self: self.sae.d_sae)
    device = property(lambda self: self.sae.device)
    W_enc = property(lambda self: self.sae.W_enc)
    b_enc = property(lambda self: self.sae.b_enc)
    W_dec = property(lambda self: self.sae.W_dec)
    b_dec = property(lambda self: self.sae.b_dec)

    def normalize(self, x: Float[Tensor, "... d_in"]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``(x_n, (scale, shift))`` with ``x = x_n · scale + shift`` undoing it on outputs."""
        x = x.to(self.sae.W_enc)
        if self.mode == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / math.sqrt(self.d_in)
            return x / scale, (scale, torch.zeros_like(scale))
        mu = x.mean(dim=-1, keepdim=True)
        xc = x - mu
        std = xc.std(dim=-1, keepdim=True)
        return xc / (std + LAYER_NORM_EPS), (std, mu)

    @staticmethod
    def denormalize(y: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        """Undo :meth:`normalize` on a reconstruction."""
        scale, shift = stats
        return y * scale + shift

    def encode_dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latents of the normalised input."""
        return self.sae.encode_dense(self.normalize(x)[0])

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """``x̂`` on the input's scale."""
        xn, stats = self.normalize(x)
        return self.denormalize(self.sae.reconstruct(xn), stats).to(x.dtype)

    def latent_counts(self, out: SaeOutput) -> Tensor:
        """As :meth:`Sae.latent_counts`."""
        return self.sae.latent_counts(out)

    def forward(self, x: Float[Tensor, "batch d_in"], **kw: Any) -> SaeOutput:
        """The inner SAE's output with ``sae_out`` and ``fvu`` on the input's scale."""
        x = _as_batch(x, self.d_in).to(self.sae.W_enc)
        xn, stats = self.normalize(x)
        out = self.sae(xn, **kw)
        sae_out = self.denormalize(out.sae_out, stats)
        return out._replace(sae_out=sae_out, fvu=_fvu(x, sae_out)[0])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
