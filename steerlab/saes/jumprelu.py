"""JumpReLU SAE: a ReLU with a learned per-latent threshold (Gemma Scope, SAELens ``jumprelu``).

Rajamanoharan et al. (2024), "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
Sparse Autoencoders"; Lieberum et al. (2024), "Gemma Scope":

    pre = (x − b_dec) W_enc + b_enc                                   # [batch, d_sae]
    z   = ReLU(pre) · H(pre − θ)          θ: [d_sae] thresholds, H the Heaviside step
    x̂   = z W_dec + b_dec

For ``θ >= 0`` (every released Gemma Scope SAE) this is the paper's ``pre · H(pre − θ)``; the
ReLU only matters for a negative threshold, where SAELens and dictionary_learning keep it
(their ``JumpReLUSAE`` / ``JumpReluAutoEncoder`` compute exactly this), so steerlab does too.
SAEs whose encoder does not subtract ``b_dec`` (Gemma Scope's ``params.npz``,
dictionary_learning's ``JumpReluAutoEncoder``) are read with ``b_enc += b_dec W_enc``, which
leaves ``pre`` and therefore the thresholds unchanged.

Training a JumpReLU SAE needs straight-through estimators for ``θ`` (the paper's rectangle
kernel), which steerlab's trainer does not implement: these SAEs are read from SAELens,
dictionary_learning and Gemma Scope files and used for inference. :meth:`JumpReluSae.forward`
returns the reconstruction, FVU and L0 of a batch (for :func:`steerlab.saes.evaluate`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerlab.saes.sae import Sae, SaeConfig, register_architecture


def jumprelu(pre: Tensor, threshold: Tensor) -> Tensor:
    """``ReLU(pre) · H(pre − θ)``: zero where ``pre <= θ`` (strict, as SAELens) or ``pre <= 0``."""
    return pre.relu() * (pre > threshold).to(pre.dtype)


@register_architecture("jumprelu")
class JumpReluSae(Sae):
    """JumpReLU SAE: ``z = ReLU(pre) · H(pre − θ)`` with one threshold per latent (see module).

    Parameters: the four of :class:`~steerlab.saes.sae.Sae` plus ``threshold [d_sae]``
    (zeros on a fresh SAE, which makes it a ReLU SAE until a trained threshold is loaded).
    """

    unit_norm_decoder = False
    threshold: nn.Parameter

    def __init__(self, cfg: SaeConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(cfg, device=device)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, device=device, dtype=cfg.torch_dtype))

    def encode_dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return jumprelu(self.pre_acts(x), self.threshold)
