"""SAE metrics that need no model, and the loss-recovered formulas for spliced SAEs.

Definitions (``x`` the activations, ``x̂`` the reconstruction, ``x̄`` the mean of *all*
evaluated tokens, ``N`` tokens, ``d = d_in``):

- FVU (fraction of variance unexplained) = ``Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖²``. Numerator
  and denominator are accumulated separately over batches in float64, the denominator with
  pairwise mean/variance updates (Chan et al. 1979), so the result equals the formula on the
  concatenated data and does not depend on the batching. This avoids SAELens's historic bugs:
  variance about zero instead of about the mean (#659), a per-batch ratio averaged over
  batches (#443), and MSE divided by the batch token count (#711).
- explained variance = ``1 − FVU``.
- per-token MSE = ``Σ_t ‖x_t − x̂_t‖² / N`` (summed over the ``d`` dimensions, averaged over
  tokens); ``mse_per_element`` = that ``/ d``.
- L0 = mean number of non-zero latents per token.
- attention sinks: :func:`evaluate` leaves a store's sink rows (its ``sink`` column, the first
  token of every window and the few massive-norm rows, see
  :func:`steerlab.capture.store.sink_rows`) out of every metric by default and records how many
  it left out (:attr:`SaeMetrics.sink_rows`): they are ~2% of the rows at ``resid_post.6`` but
  over a quarter of its variance, so including them flatters FVU (their huge, nearly constant
  norm direction is easy to reconstruct) and swings it with the share of window starts.
- density of latent ``i`` = fraction of tokens on which it is non-zero; dead = density 0 over
  the evaluated tokens; dense = density above ``dense_threshold`` (default 0.1).
- loss recovered (SAELens's ``ce_loss_score``; Gao et al. 2024 report the delta):
  ``(L_ablated − L_spliced) / (L_ablated − L_clean)`` with the site zero-ablated or replaced
  by its mean; 1 = the SAE loses nothing, 0 = no better than ablating.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.capture.store import SINK
from steerlab.checks import check_int, check_real

if TYPE_CHECKING:
    from steerlab.capture.store import ActivationStore
    from steerlab.saes.normalize import NormalizedSae
    from steerlab.saes.sae import Sae


@dataclass(frozen=True, eq=False)
class SaeMetrics:
    """Reconstruction and sparsity metrics over a set of tokens (see the module docstring)."""

    n_tokens: int
    fvu: float
    explained_variance: float
    mse_per_token: float
    mse_per_element: float
    l0: float
    dead_frac: float
    dense_frac: float
    density: Float[Tensor, " d_sae"]
    """Firing frequency of each latent."""
    sink_rows: int = 0
    """Attention-sink rows left out (0 when they were included or the source had no marks)."""

    def as_dict(self) -> dict[str, float | int]:
        """Scalar metrics (no density) for logs and JSON."""
        return {
            k: getattr(self, k)
            for k in ("n_tokens", "fvu", "explained_variance", "mse_per_token",
                      "mse_per_element", "l0", "dead_frac", "dense_frac", "sink_rows")
        }  # fmt: skip


class MetricsFitter:
    """Streams ``(x, x̂, latents)`` batches into float64 sums; :meth:`finalize` gives metrics.

    Args:
        d_in: activation width.
        d_sae: number of latents (for densities); 0 to skip latent metrics.
        dense_threshold: density above which a latent counts as dense.
    """

    def __init__(self, d_in: int, d_sae: int = 0, dense_threshold: float = 0.1) -> None:
        self.d_in, self.d_sae, self.dense_threshold = d_in, d_sae, dense_threshold
        self.n = 0
        self.mean = torch.zeros(d_in, dtype=torch.float64)
        self.sst = torch.zeros((), dtype=torch.float64)  # Σ‖x − x̄‖² about the running mean
        self.sse = torch.zeros((), dtype=torch.float64)  # Σ‖x − x̂‖²
        self.nnz = torch.zeros((), dtype=torch.float64)  # Σ_t ‖z_t‖_0
        self.counts = torch.zeros(max(d_sae, 0), dtype=torch.float64)

    def update(
        self,
        x: Float[Tensor, "n d_in"],
        x_hat: Float[Tensor, "n d_in"],
        counts: Tensor | None = None,
    ) -> MetricsFitter:
        """Add a batch.

        Args:
            x: activations.
            x_hat: reconstructions.
            counts: ``[d_sae]`` tokens of this batch on which each latent fired
                (:meth:`Sae.latent_counts`); their sum is the batch's ``Σ_t L0_t``.
        """
        X = x.reshape(-1, self.d_in).to("cpu", torch.float64)
        Xh = x_hat.reshape(-1, self.d_in).to("cpu", torch.float64)
        nb = X.shape[0]
        if nb == 0:
            return self
        mb = X.mean(0)
        delta = mb - self.mean
        n = self.n + nb
        self.sst += (X - mb).pow(2).sum() + delta.pow(2).sum() * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n
        self.sse += (X - Xh).pow(2).sum()
        if counts is not None:
            c = counts.to("cpu", torch.float64)
            self.counts += c
            self.nnz += c.sum()
        return self

    def finalize(self) -> SaeMetrics:
        """Metrics over everything added (needs at least one token)."""
        if self.n == 0:
            raise ValueError("no tokens were added")
        sst = float(self.sst)
        fvu = float(self.sse) / sst if sst > 0 else math.nan
        density = self.counts / self.n
        d_sae = max(self.d_sae, 1)
        return SaeMetrics(
            n_tokens=self.n,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            mse_per_token=float(self.sse) / self.n,
            mse_per_element=float(self.sse) / (self.n * self.d_in),
            l0=float(self.nnz) / self.n,
            dead_frac=float((density == 0).sum()) / d_sae if self.d_sae else math.nan,
            dense_frac=(
                float((density > self.dense_threshold).sum()) / d_sae if self.d_sae else math.nan
            ),
            density=density.float(),
        )


def fvu(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """``Σ‖x − x̂‖² / Σ‖x − x̄‖²`` on one tensor, in float64."""
    X, Xh = x.double(), x_hat.double()
    return float((X - Xh).pow(2).sum() / (X - X.mean(0)).pow(2).sum())


@torch.no_grad()
def evaluate(
    sae: Sae | NormalizedSae,
    source: Tensor | ActivationStore,
    site: str | None = None,
    *,
    n_tokens: int | None = None,
    batch_size: int = 4096,
    dense_threshold: float = 0.1,
    exclude_sinks: bool = True,
) -> SaeMetrics:
    """Stream a tensor or a store site through ``sae`` and compute :class:`SaeMetrics`.

    Args:
        sae: the SAE.
        source: ``[n, d_in]`` tensor or an activation store (read in store order).
        site: store site; default ``sae.cfg.site``.
        n_tokens: evaluate at most this many tokens (None: all).
        batch_size: tokens per forward.
        dense_threshold: density above which a latent is dense.
        exclude_sinks: leave a store's attention-sink rows out (the default; ``n_tokens``
            counts the rows kept). A tensor has no marks: pass only the rows to score.
    """
    check_int(n_tokens, "n_tokens", optional=True)
    check_int(batch_size, "batch_size")
    check_real(dense_threshold, "dense_threshold", low=0, high=1, low_open=True)
    fitter = MetricsFitter(sae.d_in, sae.d_sae, dense_threshold)
    n_sinks = 0
    if isinstance(source, Tensor):
        X = source.reshape(-1, sae.d_in)
        batches: Iterator[Tensor | dict[str, Tensor]] = (
            X[i : i + batch_size] for i in range(0, X.shape[0], batch_size)
        )
    else:
        site = site or sae.cfg.site
        if site is None or site not in source.sites:
            raise KeyError(
                f"store {source.path} has no site {site!r}; it holds {sorted(source.sites)}"
            )
        names = [site, SINK] if exclude_sinks else site
        batches = source.iter_batches(names, batch_size, shuffle=False, drop_last=False)
    for x in batches:
        if isinstance(x, dict):  # a store batch with its sink column
            assert site is not None  # dict batches come from the store branch, which checked it
            n_sinks += int(x[SINK].sum())
            x = x[site][~x[SINK]]
        x = x[: (n_tokens - fitter.n) if n_tokens is not None else None].to(sae.device)
        if x.shape[0] == 0:
            break
        out = sae(x)
        fitter.update(x, out.sae_out, sae.latent_counts(out))
        if n_tokens is not None and fitter.n >= n_tokens:
            break
    return dataclasses.replace(fitter.finalize(), sink_rows=n_sinks)


class DensityHistogram(NamedTuple):
    """Histogram of ``log10`` latent densities (dead latents counted apart).

    Attributes:
        edges: ``[bins + 1]`` bin edges in ``log10(density)``.
        counts: ``[bins]`` latents per bin.
        n_dead: latents with density 0.
    """

    edges: Tensor
    counts: Tensor
    n_dead: int


def density_histogram(
    density: Float[Tensor, " d_sae"], bins: int = 50, lo: float = -8.0
) -> DensityHistogram:
    """Bin ``log10(density)`` of the live latents into ``bins`` bins over ``[lo, 0]``."""
    live = density[density > 0].double()
    logd = live.log10().clamp(lo, 0.0)
    counts = torch.histc(logd, bins=bins, min=lo, max=0.0).long()
    edges = torch.linspace(lo, 0.0, bins + 1, dtype=torch.float64)
    return DensityHistogram(edges, counts, int((density == 0).sum()))


class LossRecovered(NamedTuple):
    """Losses with the site clean, spliced and ablated, and the recovered fractions.

    Attributes:
        clean, spliced, zero_abl, mean_abl: the losses (``mean_abl`` may be nan).
        vs_zero: ``(zero_abl − spliced) / (zero_abl − clean)``.
        vs_mean: ``(mean_abl − spliced) / (mean_abl − clean)`` (nan without ``mean_abl``).
    """

    clean: float
    spliced: float
    zero_abl: float
    mean_abl: float
    vs_zero: float
    vs_mean: float


def _recovered(clean: float, spliced: float, ablated: float) -> float:
    den = ablated - clean
    return (ablated - spliced) / den if den != 0 and not math.isnan(den) else math.nan


def ce_loss_recovered(
    clean: float, spliced: float, zero_abl: float, mean_abl: float = math.nan
) -> LossRecovered:
    """Fraction of the loss gap closed by the SAE, against zero- and mean-ablation.

    ``(L_abl − L_spliced) / (L_abl − L_clean)`` (SAELens ``ce_loss_score``). The same formula
    gives the KL score: pass KL divergences to the clean model, so ``clean = 0``. A zero
    denominator gives nan.
    """
    vals = [float(v) for v in (clean, spliced, zero_abl, mean_abl)]
    c, s, z, m = vals
    return LossRecovered(c, s, z, m, _recovered(c, s, z), _recovered(c, s, m))


Replacement = Callable[[Tensor], Tensor]


def loss_recovered(
    loss_fn: Callable[[Replacement | None], float],
    sae: Sae,
    mean: Float[Tensor, " d_in"] | None = None,
) -> LossRecovered:
    """Run ``loss_fn`` clean, with the SAE spliced in, and with the site ablated.

    Args:
        loss_fn: ``loss_fn(replace)`` returns the model's loss (CE, or KL to the clean model)
            when the site's activations ``h [..., d_in]`` are replaced by ``replace(h)``;
            ``replace=None`` means the clean model. steerlab's steering interventions provide
            the splice.
        sae: the SAE; the spliced replacement is :meth:`Sae.reconstruct`.
        mean: the site's mean activation for mean-ablation (skipped when None).
    """

    @torch.no_grad()
    def spliced(h: Tensor) -> Tensor:
        return sae.reconstruct(h.to(sae.device)).to(h)

    def zero(h: Tensor) -> Tensor:
        return torch.zeros_like(h)

    clean = loss_fn(None)
    out = [loss_fn(spliced), loss_fn(zero)]
    if mean is not None:
        out.append(loss_fn(lambda h: mean.to(h).expand_as(h)))
    return ce_loss_recovered(clean, *out)
