"""Sparse autoencoders: TopK (Makhzani & Frey 2013; Gao et al. 2024) and ReLU-L1 (baseline).

Both share the affine encoder and decoder of Gao et al. (2024), with SAELens's names and
layouts (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``):

    pre  = (x − b_dec) W_enc + b_enc                               # [batch, d_sae]
    z    = ReLU(TopK_k(pre))     or     ReLU(pre)                   # latents
    x̂    = z W_dec + b_dec                                          # [batch, d_in]

A small registry maps the ``architecture`` string of :class:`SaeConfig` (and of ``cfg.json``)
to its class: ``"topk"`` -> :class:`TopKSae`, ``"relu_l1"`` -> :class:`ReluSae`; the
architectures that foreign formats need live one per module beside this one and register
themselves the same way: ``"jumprelu"`` (:mod:`~steerlab.saes.jumprelu`), ``"batchtopk"``
(:mod:`~steerlab.saes.batchtopk`), ``"gated"`` (:mod:`~steerlab.saes.gated`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from steerlab.config import (
    ConfigError,
    check_fraction,
    check_nonnegative,
    check_positive,
    check_types,
    require,
)
from steerlab.saes.kernels import SparseDecode, TopKEncode

logger = logging.getLogger(__name__)

Architecture = Literal["topk", "relu_l1", "jumprelu", "batchtopk", "gated"]
InitMethod = Literal["tied", "active_subspace", "random"]
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class SaeConfig:
    """What an SAE is: its shape, architecture, where it reads and how it was initialised."""

    d_in: int
    """Width of the input activations (``d_model`` of the site)."""
    d_sae: int
    """Number of latents (the dictionary size, or "width")."""
    architecture: Architecture = "topk"
    """``"topk"``: keep the ``k`` largest pre-activations; ``"relu_l1"``: ReLU + L1 penalty;
    ``"jumprelu"``, ``"batchtopk"``, ``"gated"``: see their modules."""
    k: int = 32
    """Latents kept per token (TopK; BatchTopK: on average over a training batch); must
    satisfy ``1 <= k < d_sae``."""
    l1_coefficient: float = 0.05
    """Weight of the scale-free L1 penalty (ReLU-L1 only, see :class:`ReluSae`)."""
    site: str | None = None
    """Site the SAE reads, e.g. ``"resid_post.6"`` (a key of the activation store)."""
    model_id: str | None = None
    """Model the activations come from (provenance)."""
    init: InitMethod = "tied"
    """Initialisation used by the trainer (see :mod:`steerlab.saes.init`)."""
    init_var: float = 0.99
    """Active-subspace init: keep the PCA directions explaining this fraction of variance."""
    init_dim: int | None = None
    """Active-subspace init: explicit subspace dimension (overrides ``init_var``)."""
    dtype: str = "float32"
    """Parameter dtype: ``float32``, ``float64``, ``float16`` or ``bfloat16``."""
    name: str | None = None
    """Identifier (a directory name in checkpoints); derived from the fields when None."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self, "architecture", self.architecture in SAE_CLASSES,
                f"a registered architecture {sorted(SAE_CLASSES)}")  # fmt: skip
        check_positive(self, "d_in", "d_sae", "k")
        uses_k = SAE_CLASSES[self.architecture].uses_k
        if uses_k and not 1 <= self.k < self.d_sae:
            raise ConfigError("SaeConfig", "k", f"k must satisfy 1 <= k < d_sae={self.d_sae}, "
                              f"got k={self.k}")  # fmt: skip
        check_nonnegative(self, "l1_coefficient")
        check_fraction(self, "init_var", high=True)
        if self.init_dim is not None:
            require(self, "init_dim", 1 <= self.init_dim <= self.d_in, f"in [1, d_in={self.d_in}]")
        require(self, "dtype", self.dtype in DTYPES, f"one of {sorted(DTYPES)}")
        if self.name is None:
            k = f".k{self.k}" if uses_k else ""
            self.name = f"{self.site or 'x'}.{self.architecture}.w{self.d_sae}{k}.{self.init}"
        if not _NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r} may hold only letters, digits and '_.-'")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The parameter dtype as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SaeConfig:
        """Build from :meth:`to_dict` output; unknown keys (e.g. ``kind``) are ignored."""
        names = {f.name for f in fields(cls)}
        extra = set(d) - names - {"kind", "steerlab_version"}
        if extra:
            logger.warning("SaeConfig.from_dict: ignoring unknown keys %s", sorted(extra))
        return cls(**{k: v for k, v in d.items() if k in names})


class SaeOutput(NamedTuple):
    """Result of :meth:`Sae.forward` on a ``[batch, d_in]`` input.

    Attributes:
        sae_out: ``[batch, d_in]`` reconstruction ``x̂``.
        latent_acts: TopK: ``[batch, k]`` values of the kept latents (after ReLU, may be 0);
            ReLU-L1: ``[batch, d_sae]`` dense latents.
        latent_indices: TopK: ``[batch, k]`` latent ids of ``latent_acts``; ReLU-L1: None.
        fvu: ``Σ‖x − x̂‖² / Σ‖x − x̄‖²`` over the batch (``x̄`` the batch mean): the loss.
        auxk_loss: AuxK loss of the dead latents (0 without dead latents or for ReLU-L1).
        l1_loss: scale-free L1 penalty (ReLU-L1; 0 for TopK), not yet multiplied by λ.
        l0: mean number of non-zero latents per token (detached).
    """

    sae_out: Float[Tensor, "batch d_in"]
    latent_acts: Float[Tensor, "batch k"]
    latent_indices: Int[Tensor, "batch k"] | None
    fvu: Tensor
    auxk_loss: Tensor
    l1_loss: Tensor
    l0: Tensor


SAE_CLASSES: dict[str, type[Sae]] = {}


def register_architecture(name: str) -> Callable[[type[Sae]], type[Sae]]:
    """Class decorator: map ``architecture == name`` to ``cls``."""

    def deco(cls: type[Sae]) -> type[Sae]:
        SAE_CLASSES[name] = cls
        cls.architecture = name
        return cls

    return deco


def sae_class(architecture: str) -> type[Sae]:
    """The class registered for ``architecture``, with a clear error for unknown names."""
    if architecture not in SAE_CLASSES:
        raise ValueError(f"unknown SAE architecture {architecture!r}; known: {sorted(SAE_CLASSES)}")
    return SAE_CLASSES[architecture]


def build_sae(cfg: SaeConfig, device: str | torch.device = "cpu") -> Sae:
    """A freshly initialised SAE of the class named by ``cfg.architecture``."""
    return sae_class(cfg.architecture)(cfg, device=device)


class Sae(nn.Module):
    """Base class: parameters, affine maps, decoder-norm utilities and disk I/O.

    Parameters (SAELens names and layouts): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
    ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``. A new SAE gets a data-free tied init (unit-norm
    Gaussian decoder rows, ``W_enc = W_decᵀ``, zero biases); :mod:`steerlab.saes.init` offers
    data-aware inits.
    """

    architecture: ClassVar[str] = ""
    uses_k: ClassVar[bool] = False
    """Whether :attr:`SaeConfig.k` means something for this architecture (checked, named)."""
    unit_norm_decoder: ClassVar[bool] = False
    """Whether training keeps decoder rows at unit norm (and projects their gradient)."""

    def __init__(self, cfg: SaeConfig, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} needs architecture {self.architecture!r}")
        self.cfg = cfg
        kw = {"device": device, "dtype": cfg.torch_dtype}
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        with torch.no_grad():
            self.W_dec.normal_()
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            self.W_enc.copy_(self.W_dec.T)

    @property
    def d_in(self) -> int:
        """Input width."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.cfg.d_sae

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.W_enc.device

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(d_in={self.d_in}, d_sae={self.d_sae}, name={self.cfg.name!r})"
        )

    # --- maps ---------------------------------------------------------------------------------

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Encoder pre-activations ``(x − b_dec) W_enc + b_enc``."""
        return (x.to(self.W_enc) - self.b_dec) @ self.W_enc + self.b_enc

    def encode_dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Dense latents ``z`` (zeros where a latent is off)."""
        raise NotImplementedError

    def decode_dense(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reference decoder ``z W_dec + b_dec`` on dense latents."""
        return z @ self.W_dec + self.b_dec

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """``x̂`` for any leading shape (no losses); the SAE's replacement function."""
        return self.decode_dense(self.encode_dense(x)).to(x.dtype)

    def forward(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        dead_mask: Tensor | None = None,  # noqa: ARG002 - the signature of every Sae
        k: int | None = None,  # noqa: ARG002
    ) -> SaeOutput:
        """Reconstruction, FVU and L0 of one batch from the dense maps, with no training losses
        (the inference forward of the architectures that steerlab reads but does not train,
        gated and JumpReLU; TopK, ReLU-L1 and BatchTopK override it with their losses)."""
        x = _as_batch(x, self.d_in).to(self.W_enc)
        z = self.encode_dense(x)
        sae_out = self.decode_dense(z)
        fvu, _ = _fvu(x, sae_out)
        zero = sae_out.new_zeros(())
        return SaeOutput(sae_out, z, None, fvu, zero, zero, (z > 0).sum(-1).float().mean())

    def latent_counts(self, out: SaeOutput) -> Int[Tensor, " d_sae"]:
        """Tokens of the batch on which each latent is non-zero."""
        if out.latent_indices is None:
            return (out.latent_acts > 0).sum(0)
        counts = torch.zeros(self.d_sae, dtype=torch.long, device=out.latent_acts.device)
        idx = out.latent_indices[out.latent_acts > 0]
        return counts.index_add_(0, idx, torch.ones_like(idx))

    # --- decoder norm -------------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm_(self) -> None:
        """Rescale every decoder row to unit L2 norm (zero rows stay zero)."""
        eps = torch.finfo(self.W_dec.dtype).eps
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(eps)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions_(self) -> None:
        """Project out of ``W_dec.grad`` its component along each (unit) decoder row.

        ``g_i ← g_i − (g_i · d_i) d_i`` (Gao et al. 2024, sparsify): the step then moves
        each row tangentially to the unit sphere, so renormalising afterwards changes it by
        only second-order terms.
        """
        g = self.W_dec.grad
        if g is None:
            return
        parallel = (g * self.W_dec).sum(dim=1, keepdim=True)
        g -= parallel * self.W_dec

    # --- disk ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the steerlab layout (``cfg.json`` + ``sae.safetensors``), see ``formats``."""
        from steerlab.saes.formats import save_sae

        return save_sae(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Sae:
        """Read an SAE saved by :meth:`save` (whatever its architecture)."""
        from steerlab.saes.formats import load_sae

        return load_sae(path, device=device)


def _fvu(x: Tensor, x_hat: Tensor, total_variance: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Σ‖x − x̂‖² / Σ‖x − x̄‖², Σ‖x − x̄‖²)`` for one batch; the variance is clamped > 0.

    ``total_variance`` given (the whole batch's, when ``x`` is one rank's share of it under
    data-parallel training) replaces this share's own, so the ranks' FVUs sum to the batch's.
    """
    if total_variance is None:
        total_variance = (x - x.mean(0)).pow(2).sum()
    total_variance = total_variance.to(x.dtype).clamp_min(torch.finfo(x.dtype).tiny)
    return (x - x_hat).pow(2).sum() / total_variance, total_variance


def _as_batch(x: Tensor, d_in: int) -> Tensor:
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"forward expects [batch, {d_in}] activations, got {tuple(x.shape)}")
    return x


@register_architecture("topk")
class TopKSae(Sae):
    """TopK SAE (Makhzani & Frey 2013; Gao et al. 2024, "Scaling and evaluating SAEs").

    ``z = ReLU(TopK_k((x − b_dec) W_enc + b_enc))``, ``x̂ = z W_dec + b_dec`` with unit-norm
    decoder rows kept by the trainer. The loss is the batch FVU plus ``auxk_alpha`` times the
    AuxK loss (Gao et al. §A.2, as in EleutherAI's sparsify): with ``D`` the latents dead for a
    window of tokens, ``k_aux = min(d_in / 2, |D|)`` dead latents with the largest
    pre-activations (no ReLU, as in sparsify, so a latent with only negative pre-activations
    still gets gradient) reconstruct the detached residual ``e = x − x̂`` without bias:

        L_aux = min(|D| / (d_in/2), 1) · Σ‖e − ê‖² / Σ‖x − x̄‖²,    ê = z_aux W_dec[D].

    Decoding is sparse (``embedding_bag`` over the kept latents); :meth:`decode_dense` is the
    reference. The encoder backward is sparse too (:class:`TopKEncode`).
    """

    uses_k = True
    unit_norm_decoder = True

    def encode(
        self, x: Float[Tensor, "... d_in"], k: int | None = None, *, fused: bool = True
    ) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
        """``(top_acts, top_indices)``: the ``k`` largest pre-activations after ReLU.

        Args:
            x: activations ``[..., d_in]``.
            k: latents kept (default ``cfg.k``; the trainer passes an annealed k).
            fused: use the sparse-backward encoder; False is the dense autograd reference.
        """
        k = self.cfg.k if k is None else k
        if not 1 <= k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {k}")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.d_in).to(self.W_enc)
        if fused:
            vals, idx = TopKEncode.apply(x, self.b_dec, self.W_enc, self.b_enc, k)
        else:
            pre = (x - self.b_dec) @ self.W_enc + self.b_enc
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            vals = vals.relu()
        return vals.reshape(*lead, k), idx.reshape(*lead, k)

    def decode(
        self, top_acts: Float[Tensor, "... k"], top_indices: Int[Tensor, "... k"]
    ) -> Float[Tensor, "... d_in"]:
        """Sparse decoder ``Σ_j a_j W_dec[i_j] + b_dec`` via ``embedding_bag`` (sparse backward)."""
        lead, k = top_acts.shape[:-1], top_acts.shape[-1]
        acts, idx = top_acts.reshape(-1, k).to(self.W_dec), top_indices.reshape(-1, k)
        if torch.is_grad_enabled() and (acts.requires_grad or self.W_dec.requires_grad):
            out = SparseDecode.apply(acts, idx, self.W_dec)
        else:
            out = F.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum")
        return (out + self.b_dec).reshape(*lead, self.d_in)

    def encode_dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        vals, idx = self.encode(x)
        return vals.new_zeros(*vals.shape[:-1], self.d_sae).scatter_(-1, idx, vals)

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return self.decode(*self.encode(x)).to(x.dtype)

    def forward(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        dead_mask: Tensor | None = None,
        k: int | None = None,
        total_variance: Tensor | None = None,
        n_rows: int | None = None,  # noqa: ARG002 - same signature as ReluSae
    ) -> SaeOutput:
        """Encode, decode and compute the losses of one batch.

        Args:
            x: ``[batch, d_in]`` activations.
            dead_mask: ``[d_sae]`` bool, latents dead for the trainer's window (enables AuxK).
            k: latents kept (k annealing); default ``cfg.k``.
            total_variance: ``Σ‖x − x̄‖²`` of the whole batch when ``x`` is one rank's share
                of it (data-parallel training): the losses are then this share's part of
                the batch's, and the ranks' losses sum to it. Default: ``x``'s own.
            n_rows: rows of the whole batch (used by ReLU-L1's mean; accepted for symmetry).
        """
        x = _as_batch(x, self.d_in).to(self.W_enc)
        acts, idx = self.encode(x, k)
        sae_out = self.decode(acts, idx)
        fvu, total_variance = _fvu(x, sae_out, total_variance)
        auxk = sae_out.new_zeros(())
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead:
            dead = dead_mask.nonzero().squeeze(1)  # type: ignore[union-attr]
            k_aux = x.shape[1] // 2
            scale = min(n_dead / k_aux, 1.0) if k_aux else 1.0
            k_aux = max(1, min(k_aux, n_dead))
            pre_dead = (x - self.b_dec) @ self.W_enc[:, dead] + self.b_enc[dead]
            aux_acts, aux_idx = pre_dead.topk(k_aux, dim=-1, sorted=False)
            e_hat = F.embedding_bag(
                aux_idx, self.W_dec[dead], per_sample_weights=aux_acts, mode="sum"
            )
            e = (x - sae_out).detach()
            auxk = scale * (e_hat - e).pow(2).sum() / total_variance
        l0 = (acts > 0).sum(-1).float().mean()
        return SaeOutput(sae_out, acts, idx, fvu, auxk, sae_out.new_zeros(()), l0)


@register_architecture("relu_l1")
class ReluSae(Sae):
    """ReLU SAE with a decoder-norm-weighted L1 penalty (baseline).

    ``z = ReLU((x − b_dec) W_enc + b_enc)``, ``x̂ = z W_dec + b_dec`` (Bricken et al. 2023,
    "Towards Monosemanticity"). The penalty follows Anthropic's April 2024 update: decoder rows
    are *not* constrained to unit norm; instead each latent's activation is weighted by its
    decoder norm, ``Σ_i z_i ‖W_dec,i‖``. To make λ independent of the activation scale (the
    update instead rescales inputs to ``E‖x‖² = d_in``), the penalty is divided by the batch's
    RMS distance to its mean:

        L = FVU + λ · mean_t Σ_i z_ti ‖W_dec,i‖ / sqrt(mean_t ‖x_t − x̄‖²).

    This is the same SAE as SAELens's ``standard`` architecture.
    """

    unit_norm_decoder = False

    def encode_dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self.pre_acts(x).relu()

    def forward(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        dead_mask: Tensor | None = None,  # noqa: ARG002 - same signature as TopKSae
        k: int | None = None,  # noqa: ARG002
        total_variance: Tensor | None = None,
        n_rows: int | None = None,
    ) -> SaeOutput:
        """Encode, decode and compute FVU and the L1 penalty of one batch (see the class).

        ``total_variance`` and ``n_rows`` of the whole batch, when ``x`` is one rank's share
        of it (data-parallel training), make the losses this share's part of the batch's.
        """
        x = _as_batch(x, self.d_in).to(self.W_enc)
        z = self.encode_dense(x)
        sae_out = self.decode_dense(z)
        fvu, total_variance = _fvu(x, sae_out, total_variance)
        n = x.shape[0] if n_rows is None else n_rows
        rms = (total_variance / n).sqrt()
        if n_rows is None:
            l1 = (z @ self.W_dec.norm(dim=1)).mean() / rms
        else:
            l1 = (z @ self.W_dec.norm(dim=1)).sum() / n / rms
        l0 = (z > 0).sum(-1).float().mean()
        return SaeOutput(sae_out, z, None, fvu, sae_out.new_zeros(()), l1, l0)


DEFAULT_BASE_LR = 1.6e-3
"""Learning rate at width 2**14 of :func:`lr_for_width` (3.0e-3 at width 4608). Gao et al.'s
Adam value, 2e-4, is tuned for runs of billions of tokens and leaves the 40-500-step runs a CPU
affords far from converged (``docs/sae_results.md``: FVU 0.35-0.38 after 44 steps at 3.8e-4).
Higher rates reconstruct better still after 80 steps (held-out FVU 0.166 at 1e-2 against
0.185 at 3e-3 on ``resid_post.6``) but kill latents: at 9.4e-3, 20% of an ``attn_out.6`` SAE's
latents stop firing (0-0.1% at 3e-3), so the default stays at the rate that keeps them."""


def lr_for_width(d_sae: int, base_lr: float = DEFAULT_BASE_LR) -> float:
    """Learning rate ``base_lr / sqrt(d_sae / 2**14)``: the width scaling of Gao et al. (2024)
    and sparsify."""
    return base_lr / math.sqrt(d_sae / 2**14)
