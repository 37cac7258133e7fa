"""Gated SAE: a gate decides which latents fire, a rescaled path sets how much.

Rajamanoharan et al. (2024), "Improving Dictionary Learning with Gated Sparse Autoencoders",
as SAELens's ``gated`` and dictionary_learning's ``GatedAutoEncoder`` compute it:

    u     = (x − b_dec) W_enc                                         # [batch, d_sae]
    gate  = H(u + b_gate)                                              # which latents fire
    mag   = ReLU(u · exp(r_mag) + b_mag)                               # how much
    z     = gate · mag,    x̂ = z W_dec + b_dec

steerlab stores ``b_gate`` as ``b_enc`` (so :meth:`~steerlab.saes.sae.Sae.pre_acts` is the gate
pre-activation) beside the parameters ``r_mag`` and ``b_mag``. Gated SAEs are read from
SAELens and dictionary_learning files for inference; steerlab's trainer does not train them
(the paper's auxiliary loss through a frozen decoder is not implemented).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerlab.saes.sae import Sae, SaeConfig, register_architecture


@register_architecture("gated")
class GatedSae(Sae):
    """Gated SAE (see the module). Parameters: the four of :class:`~steerlab.saes.sae.Sae`
    (``b_enc`` is the gate bias) plus ``r_mag [d_sae]`` and ``b_mag [d_sae]`` (zeros when new)."""

    unit_norm_decoder = False
    r_mag: nn.Parameter
    b_mag: nn.Parameter

    def __init__(self, cfg: SaeConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(cfg, device=device)
        kw = {"device": device, "dtype": cfg.torch_dtype}
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))

    def encode_dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        u = (x.to(self.W_enc) - self.b_dec) @ self.W_enc
        gate = (u + self.b_enc > 0).to(u.dtype)
        return gate * (u * self.r_mag.exp() + self.b_mag).relu()
