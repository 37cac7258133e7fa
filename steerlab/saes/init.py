"""SAE initialisation: random, tied, and active-subspace (Wang et al. 2025).

- ``random``: independent unit-norm Gaussian encoder columns and decoder rows, zero biases.
- ``tied`` (Gao et al. 2024; sparsify): unit-norm Gaussian decoder rows, ``W_enc = c W_decᵀ``,
  ``b_dec`` = data mean (the mean-centring that Gao et al. do with the geometric median and
  sparsify with the batch mean), ``b_enc = 0``; the scalar ``c`` is the least-squares optimal
  encoder scale on a sample (:func:`fit_encoder_scale_`).
- ``active_subspace`` (Wang, Ge, Shu, He & Qiu 2025, "Attention layers add into
  low-dimensional residual subspaces", arXiv 2508.16929): as ``tied`` but every decoder row is
  a random combination of the top-``d`` principal directions ``U_d`` of the de-meaned data,
  ``W_dec = normalise_rows(C U_dᵀ)``, ``C ~ N(0, 1)^{d_sae × d}`` (isotropic inside the
  subspace; the authors' code draws uniform coefficients), ``W_enc = c W_decᵀ``. ``d`` is the smallest dimension
  explaining ``var`` (default 99%) of the variance, or given explicitly. Latents then start
  where the activations live, which is what keeps them alive on low-rank sites such as
  attention outputs.

The statistics come from many batches (a store or a tensor) through :class:`StatsFitter`,
which accumulates the mean and covariance in float64 (Chan et al. 1979 pairwise updates).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.capture.store import SINK
from steerlab.checks import check_int
from steerlab.distributed import all_gather_rows, all_reduce_, all_reduce_moments_
from steerlab.subspace import Subspace, add_rows_

if TYPE_CHECKING:
    from steerlab.capture.store import ActivationStore
    from steerlab.saes.sae import Sae

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ActivationStats:
    """Mean and covariance of a site's activations (float64), and a few rows.

    Attributes:
        mean: ``[d_in]`` data mean ``μ``.
        cov: ``[d_in, d_in]`` unbiased covariance ``Σ``.
        n: number of samples.
        sample: the first rows seen (up to :attr:`StatsFitter.keep`), used to fit the
            encoder scale of an initialised SAE; None if not kept.
    """

    mean: Float[Tensor, " d_in"]
    cov: Float[Tensor, "d_in d_in"]
    n: int
    sample: Float[Tensor, "n_sample d_in"] | None = None

    def spectrum(self) -> tuple[Float[Tensor, " d_in"], Float[Tensor, "d_in d_in"]]:
        """Eigenvalues (descending, clamped >= 0) and eigenvectors (columns) of ``Σ``."""
        lam, vecs = torch.linalg.eigh(self.cov)
        return lam.flip(0).clamp_min(0.0), vecs.flip(1)

    def explained_variance_ratio(self) -> Float[Tensor, " d_in"]:
        """``λ_i / Σ λ``, descending."""
        lam, _ = self.spectrum()
        total = lam.sum()
        if total <= 0:
            raise ValueError("the activations have zero variance")
        return lam / total

    def effective_rank(self, var: float = 0.99) -> int:
        """Smallest number of principal directions explaining a fraction ``var`` of variance."""
        return _rank_for(self.explained_variance_ratio(), var)

    def pca(self, var: float = 0.99, d: int | None = None) -> Subspace:
        """The top principal subspace (``d`` directions, or as many as ``var`` needs).

        Its origin is the mean; ``meta`` records the explained variance of the kept directions.
        """
        ratio = self.explained_variance_ratio()
        d = _rank_for(ratio, var) if d is None else d
        if not 1 <= d <= self.cov.shape[0]:
            raise ValueError(f"d must be in [1, {self.cov.shape[0]}], got {d}")
        _, vecs = self.spectrum()
        basis = vecs[:, :d]
        meta = {
            "method": "pca_stats",
            "n_samples": self.n,
            "explained_variance": float(ratio[:d].sum()),
        }
        return Subspace(basis, self.mean.clone(), meta)

    @property
    def gamma(self) -> float:
        """Mean-outlier ratio ``‖μ‖ / sqrt(tr Σ)``: large values predict dead latents without
        mean-centring (arXiv 2605.31518)."""
        return float(self.mean.norm() / self.cov.trace().clamp_min(1e-300).sqrt())


def _rank_for(ratio: Tensor, var: float) -> int:
    if not 0 < var <= 1:
        raise ValueError(f"var must be in (0, 1], got {var}")
    d = ratio.shape[0]
    # tolerate the round-off of the cumulative sum so var=1.0 reaches the full rank
    reach = ratio.cumsum(0) >= var - d * torch.finfo(torch.float64).eps
    return int(reach.nonzero()[0]) + 1 if reach.any() else d


class StatsFitter:
    """Streams batches into float64 mean and covariance (pairwise updates, Chan et al. 1979).

    For a new batch with ``n_b`` rows, mean ``m_b`` and scatter ``S_b = Σ (x − m_b)(x − m_b)ᵀ``:
    ``δ = m_b − m``, ``S ← S + S_b + δδᵀ · n n_b / (n + n_b)``, ``m ← m + δ n_b / (n + n_b)``.
    Non-finite rows raise an error, or with ``skip_nonfinite`` are dropped and counted in
    :attr:`n_skipped`. The first ``keep`` rows are kept as a sample.
    """

    def __init__(self, d_in: int, keep: int = 4096, *, skip_nonfinite: bool = False) -> None:
        self.d_in = d_in
        self.keep = keep
        self.skip_nonfinite = skip_nonfinite
        self.n_skipped = 0
        self.n = 0
        self.mean = torch.zeros(d_in, dtype=torch.float64)
        self.scatter = torch.zeros(d_in, d_in, dtype=torch.float64)
        self._sample: list[Tensor] = []

    def update(self, x: Float[Tensor, "... d_in"]) -> StatsFitter:
        """Add the rows of ``x``; returns ``self``."""
        X = x.reshape(-1, x.shape[-1]).to("cpu", torch.float64)
        if X.shape[1] != self.d_in:
            raise ValueError(f"expected last dim {self.d_in}, got {X.shape[1]}")
        finite = torch.isfinite(X).all(dim=1)
        if not finite.all():
            if not self.skip_nonfinite:
                raise ValueError(f"activations contain NaN or inf ({int((~finite).sum())} rows)")
            self.n_skipped += int((~finite).sum())
            X = X[finite]
        if X.shape[0] == 0:
            return self
        if self.n < self.keep:
            self._sample.append(X[: self.keep - self.n].float())
        self.n = add_rows_(self.n, self.mean, self.scatter, X)
        return self

    @torch.no_grad()
    def all_reduce_(self) -> StatsFitter:
        """Merge the statistics of every rank (``torch.distributed``), in place; returns ``self``.

        Each rank updates with its own rows; afterwards every rank holds the mean and scatter
        of all rows (:func:`steerlab.distributed.all_reduce_moments_`, Chan's rule; equal to a
        one-process fit to float64 round-off), the total :attr:`n_skipped`, and as sample the
        ranks' samples in rank order, cut to ``keep`` rows: the one-process sample when rank
        ``r`` streamed the ``r``-th contiguous part of the rows. Call it once, on every rank,
        after the last update. A no-op in one process.
        """
        self.n = all_reduce_moments_(self.n, [self.mean], [(self.scatter, 0, 0)])
        skipped = torch.tensor([float(self.n_skipped)], dtype=torch.float64)
        self.n_skipped = int(all_reduce_(skipped).item())
        local = torch.cat(self._sample) if self._sample else torch.zeros(0, self.d_in)
        sample = torch.cat(all_gather_rows(local))[: self.keep]
        self._sample = [sample] if len(sample) else []
        return self

    def finalize(self) -> ActivationStats:
        """The statistics so far (needs at least 2 rows)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 rows, got {self.n}")
        cov = self.scatter / (self.n - 1)
        cov = (cov + cov.T) / 2  # round-off can leave it slightly non-symmetric
        sample = torch.cat(self._sample) if self._sample else None
        return ActivationStats(self.mean.clone(), cov, self.n, sample)


def activation_stats(
    source: Tensor | ActivationStore,
    site: str | None = None,
    *,
    n_tokens: int | None = 65536,
    batch_size: int = 4096,
    seed: int = 0,
    skip_nonfinite: bool = False,
    exclude_sinks: bool = True,
) -> ActivationStats:
    """Mean and covariance of up to ``n_tokens`` rows of a tensor or of a store's site.

    A store's attention-sink rows (its ``sink`` column, :func:`steerlab.capture.store.sink_rows`)
    are left out by default: at ``resid_post.6`` of the embedded model 2% of the rows would hold
    over a quarter of the variance, pull the mean and make the top principal direction theirs.

    Args:
        source: ``[n, d_in]`` tensor (its first ``n_tokens`` rows are used) or a store.
        site: the store site (required for a store).
        n_tokens: rows to read (None: all). From a store they are the first shuffled rows of
            epoch 0 with ``seed``, so many shards contribute.
        batch_size: rows per read.
        seed: shuffle seed of the store stream.
        skip_nonfinite: drop rows with NaN/inf (logged) instead of raising.
        exclude_sinks: leave a store's sink rows out (``n_tokens`` counts the rows kept). A
            tensor has no marks: pass only the rows to use.
    """
    check_int(n_tokens, "n_tokens", optional=True)
    check_int(batch_size, "batch_size")
    if isinstance(source, Tensor):
        X = source.reshape(-1, source.shape[-1])
        X = X if n_tokens is None else X[:n_tokens]
        fitter = StatsFitter(X.shape[1], skip_nonfinite=skip_nonfinite)
        for i in range(0, X.shape[0], batch_size):
            fitter.update(X[i : i + batch_size])
        return _finalize(fitter)
    if site is None:
        raise ValueError(f"pass the site to read; this store holds {sorted(source.sites)}")
    if site not in source.sites:
        raise KeyError(f"store {source.path} has no site {site!r}; it holds {sorted(source.sites)}")
    fitter = StatsFitter(source.sites[site], skip_nonfinite=skip_nonfinite)
    want = source.n_tokens if n_tokens is None else min(n_tokens, source.n_tokens)
    if exclude_sinks and n_tokens is None:
        want = source.n_tokens - int(source.sink_mask().sum())
    bs = min(batch_size, max(want, 1))
    names = [site, SINK] if exclude_sinks else [site]
    for b in source.iter_batches(names, bs, seed=seed, drop_last=False, dtype=torch.float64):
        batch = b[site][~b[SINK]] if exclude_sinks else b[site]
        fitter.update(batch[: want - fitter.n])
        if fitter.n >= want:
            break
    if fitter.n < want:
        logger.info(
            "activation statistics: %d non-sink rows, fewer than the %d asked", fitter.n, want
        )
    return _finalize(fitter)


def _finalize(fitter: StatsFitter) -> ActivationStats:
    if fitter.n_skipped:
        logger.warning("activation statistics: skipped %d NaN/inf rows", fitter.n_skipped)
    return fitter.finalize()


def effective_rank(x: Tensor | ActivationStats, var: float = 0.99) -> int:
    """Number of principal directions of ``x`` (rows, de-meaned) explaining ``var`` of variance."""
    stats = x if isinstance(x, ActivationStats) else activation_stats(x, n_tokens=None)
    return stats.effective_rank(var)


class InitReport(NamedTuple):
    """What an initialisation did.

    Attributes:
        method: ``random``, ``tied`` or ``active_subspace``.
        d_active: dimension of the subspace holding the decoder rows (``d_in`` outside ASI).
        effective_rank: the data's effective rank at ``var`` (None without statistics).
        explained_variance: variance fraction of the ``d_active`` top directions (None without).
        gamma: mean-outlier ratio ``‖μ‖ / sqrt(tr Σ)`` (None without statistics).
        encoder_scale: the factor :func:`fit_encoder_scale_` applied to ``W_enc`` (1.0 if
            not fitted).
    """

    method: str
    d_active: int
    effective_rank: int | None
    explained_variance: float | None
    gamma: float | None
    encoder_scale: float = 1.0


def _unit_rows(shape: tuple[int, int], generator: torch.Generator | None) -> Tensor:
    w = torch.randn(shape, generator=generator, dtype=torch.float64)
    return w / w.norm(dim=1, keepdim=True)


@torch.no_grad()
def _assign(sae: Sae, W_dec: Tensor, W_enc: Tensor, b_dec: Tensor | None) -> None:
    sae.W_dec.copy_(W_dec)
    sae.W_enc.copy_(W_enc)
    sae.b_enc.zero_()
    sae.b_dec.copy_(b_dec) if b_dec is not None else sae.b_dec.zero_()


@torch.no_grad()
def fit_encoder_scale_(sae: Sae, sample: Float[Tensor, "n d_in"]) -> float:
    """Scale ``W_enc`` by the least-squares optimal ``c`` for ``sample``; returns ``c``.

    With ``b_enc = 0`` both encoders are positively homogeneous (TopK's selection and ReLU do
    not change when the pre-activations are scaled by ``c > 0``), so the reconstruction is
    ``x̂(c) = b_dec + c r`` with ``r = x̂(1) − b_dec``, and the best scale is closed form:
    ``c = Σ_t ⟨x_t − b_dec, r_t⟩ / Σ_t ‖r_t‖²``. This replaces the decoder-norm grid search of
    Wang et al.'s code (decoder rows stay unit norm here). Without it a tied init adds ``k``
    nearly parallel unit rows and overshoots the input several times over.
    """
    if bool(sae.b_enc.any()):
        raise ValueError("fit_encoder_scale_ needs b_enc = 0 (call it right after an init)")
    x = sample.to(sae.W_enc)
    r = (sae.reconstruct(x) - sae.b_dec).double()
    num = ((x - sae.b_dec).double() * r).sum()
    den = r.pow(2).sum()
    if den <= 0 or num <= 0:
        logger.warning("fit_encoder_scale_: no positive scale fits (num=%g, den=%g)", num, den)
        return 1.0
    c = float(num / den)
    sae.W_enc.mul_(c)
    return c


def init_random_(sae: Sae, *, generator: torch.Generator | None = None) -> InitReport:
    """Independent unit-norm Gaussian ``W_dec`` rows and ``W_enc`` columns; zero biases."""
    W_dec = _unit_rows((sae.d_sae, sae.d_in), generator)
    W_enc = _unit_rows((sae.d_sae, sae.d_in), generator).T
    _assign(sae, W_dec, W_enc, None)
    return InitReport("random", sae.d_in, None, None, None)


def init_tied_(
    sae: Sae, stats: ActivationStats | None = None, *, generator: torch.Generator | None = None
) -> InitReport:
    """Unit-norm Gaussian decoder rows, ``W_enc = c W_decᵀ``, ``b_dec = μ`` (0 without stats).

    ``c`` is fitted on ``stats.sample`` by :func:`fit_encoder_scale_` (1 without a sample).
    """
    W_dec = _unit_rows((sae.d_sae, sae.d_in), generator)
    _assign(sae, W_dec, W_dec.T, None if stats is None else stats.mean)
    if stats is None:
        return InitReport("tied", sae.d_in, None, None, None)
    c = fit_encoder_scale_(sae, stats.sample) if stats.sample is not None else 1.0
    rank = stats.effective_rank(sae.cfg.init_var)
    return InitReport("tied", sae.d_in, rank, None, stats.gamma, c)


def init_active_subspace_(
    sae: Sae,
    stats: ActivationStats,
    *,
    var: float | None = None,
    d: int | None = None,
    generator: torch.Generator | None = None,
) -> InitReport:
    """Active-subspace init (Wang et al. 2025): decoder rows inside the top PCA subspace.

    Args:
        sae: the SAE to initialise in place.
        stats: the site's mean and covariance (:func:`activation_stats`).
        var: variance fraction defining ``d`` (default ``sae.cfg.init_var``).
        d: explicit subspace dimension (default ``sae.cfg.init_dim``; overrides ``var``).
        generator: random source of the coefficients.
    """
    var = sae.cfg.init_var if var is None else var
    d = sae.cfg.init_dim if d is None else d
    sub = stats.pca(var=var, d=d)
    U = sub.basis  # [d_in, d_active] float64, orthonormal
    C = torch.randn(sae.d_sae, U.shape[1], generator=generator, dtype=torch.float64)
    W_dec = C @ U.T
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    _assign(sae, W_dec, W_dec.T, stats.mean)
    c = fit_encoder_scale_(sae, stats.sample) if stats.sample is not None else 1.0
    report = InitReport(
        "active_subspace",
        U.shape[1],
        stats.effective_rank(var),
        sub.meta["explained_variance"],
        stats.gamma,
        c,
    )
    logger.info(
        "active-subspace init of %s: d=%d of %d (%.4f of the variance), gamma=%.3g",
        sae.cfg.name, report.d_active, sae.d_in, report.explained_variance, report.gamma,
    )  # fmt: skip
    return report


def initialize_(
    sae: Sae,
    stats: ActivationStats | None = None,
    *,
    method: str | None = None,
    generator: torch.Generator | None = None,
) -> InitReport:
    """Initialise ``sae`` by ``method`` (default ``sae.cfg.init``); ASI needs ``stats``."""
    method = sae.cfg.init if method is None else method
    if method == "random":
        return init_random_(sae, generator=generator)
    if method == "tied":
        return init_tied_(sae, stats, generator=generator)
    if method == "active_subspace":
        if stats is None:
            raise ValueError("active_subspace init needs activation statistics")
        return init_active_subspace_(sae, stats, generator=generator)
    raise ValueError(f"unknown init {method!r}; choose random, tied or active_subspace")
