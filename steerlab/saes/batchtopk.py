"""BatchTopK SAE: TopK over the whole batch in training, a fixed threshold at inference.

Bussmann, Leask & Nanda (2024), "BatchTopK Sparse Autoencoders", as dictionary_learning's
``BatchTopKSAE`` and SAELens's ``batchtopk`` implement it:

    pre = (x − b_dec) W_enc + b_enc,   a = ReLU(pre)                      # [batch, d_sae]
    training:   z = a on the k·batch largest entries of the flattened a, 0 elsewhere
    inference:  z = a · H(pre − θ)              θ: one scalar threshold
    x̂ = z W_dec + b_dec

So each token keeps ``k`` latents on average, not exactly. ``θ`` is estimated during training
as an exponential moving average of the smallest activation kept by the batch TopK
(``θ ← β θ + (1 − β) min``, ``β`` = :attr:`BatchTopKSae.THRESHOLD_BETA`, dictionary_learning's
0.999; the first estimate is taken as is). ``θ < 0`` marks "not estimated yet", and then
inference keeps every positive activation (a ReLU SAE). At inference a BatchTopK SAE is a
JumpReLU SAE with every threshold equal to ``θ``, which is how SAELens saves it.

The batch TopK is used by :meth:`BatchTopKSae.forward` only while the module is in training
mode *and* gradients are enabled (the trainer's step); evaluation under ``torch.no_grad()`` and
:meth:`encode_dense` always use the threshold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from steerlab.saes.jumprelu import jumprelu
from steerlab.saes.sae import Sae, SaeConfig, SaeOutput, _as_batch, _fvu, register_architecture


def batch_topk(a: Float[Tensor, "batch d_sae"], k: int) -> Float[Tensor, "batch d_sae"]:
    """Keep the ``k · batch`` largest entries of ``a`` over the whole batch, zero the rest."""
    flat = a.reshape(-1)
    vals, idx = flat.topk(min(k * a.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).reshape(a.shape)


@register_architecture("batchtopk")
class BatchTopKSae(Sae):
    """BatchTopK SAE (see the module): batch TopK in training, ``ReLU(pre)·H(pre − θ)`` after.

    Buffers: ``threshold`` (a 0-d tensor, ``-1`` until estimated). The AuxK loss of
    :class:`~steerlab.saes.sae.TopKSae` applies unchanged to dead latents.
    """

    uses_k = True
    unit_norm_decoder = True
    THRESHOLD_BETA = 0.999
    """EMA decay of the threshold estimate (dictionary_learning's ``threshold_beta``)."""
    threshold: Tensor

    def __init__(self, cfg: SaeConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(cfg, device=device)
        self.register_buffer("threshold", torch.tensor(-1.0, device=device, dtype=cfg.torch_dtype))

    def encode_dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return jumprelu(self.pre_acts(x), self.threshold)

    @torch.no_grad()
    def update_threshold_(self, z: Tensor) -> None:
        """Fold the smallest positive kept activation of a training batch into ``threshold``."""
        kept = z[z > 0]
        if kept.numel() == 0:
            return
        m = kept.min().to(self.threshold)
        beta = self.THRESHOLD_BETA
        self.threshold.copy_(m if self.threshold < 0 else beta * self.threshold + (1 - beta) * m)

    def forward(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        dead_mask: Tensor | None = None,
        k: int | None = None,
    ) -> SaeOutput:
        """Encode, decode and compute the losses of one batch.

        In training (``self.training`` and gradients on) the batch TopK selects the latents
        and updates the threshold; otherwise the threshold does. The AuxK loss is the one of
        :class:`~steerlab.saes.sae.TopKSae` (Gao et al. 2024).

        Args:
            x: ``[batch, d_in]`` activations.
            dead_mask: ``[d_sae]`` bool, latents dead for the trainer's window (enables AuxK).
            k: average latents per token (default ``cfg.k``).
        """
        x = _as_batch(x, self.d_in).to(self.W_enc)
        k = self.cfg.k if k is None else k
        pre = self.pre_acts(x)
        training = self.training and torch.is_grad_enabled()
        z = batch_topk(pre.relu(), k) if training else jumprelu(pre, self.threshold)
        if training:
            self.update_threshold_(z)
        sae_out = self.decode_dense(z)
        fvu, total_variance = _fvu(x, sae_out)
        auxk = sae_out.new_zeros(())
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead:
            dead = dead_mask.nonzero().squeeze(1)  # type: ignore[union-attr]
            k_aux = x.shape[1] // 2
            scale = min(n_dead / k_aux, 1.0) if k_aux else 1.0
            aux_acts, aux_idx = pre[:, dead].topk(max(1, min(k_aux, n_dead)), dim=-1)
            e_hat = F.embedding_bag(
                aux_idx, self.W_dec[dead], per_sample_weights=aux_acts, mode="sum"
            )
            auxk = scale * (e_hat - (x - sae_out).detach()).pow(2).sum() / total_variance
        l0 = (z > 0).sum(-1).float().mean()
        return SaeOutput(sae_out, z, None, fvu, auxk, sae_out.new_zeros(()), l0)
