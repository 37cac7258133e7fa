"""PLS probes: the low-dimensional subspace that encodes a numeric attribute.

El-Shangiti et al., "The Geometry of Numerical Reasoning: Language Models Compare Numeric
Properties in Linear Subspaces" (NAACL 2025; ahmedoumar/The_Geometry_of_numerical_reasoning)
fit, per layer, ``StandardScaler → PLSRegression(n_components, scale=False)`` from the hidden
state of an entity to a numeric attribute (a birth year, a population), and move the hidden
state along the first PLS direction to change the model's comparison answers.

:class:`PLSProbe` is that model, and numerically the same as scikit-learn's
``make_pipeline(StandardScaler(), PLSRegression(k, scale=False))`` for one target (the tests
check weights, loadings, coefficients and predictions against it). It is computed by NIPALS
PLS1 on streamed float64 moments (:class:`PLSFitter`), so it fits activations in memory or
streamed from an :class:`~steerlab.capture.store.ActivationStore`, and cross-validation over
the number of components is exact and cheap (per-fold moments; no refitting on raw rows).

**NIPALS on moments.** With standardised, centred ``X`` and centred ``y``, ``C = XᵀX`` and
``s = Xᵀy``, each component is ``w = s/‖s‖`` (sign: largest ``|w_i|`` positive, as sklearn),
``tᵀt = wᵀCw``, ``p = C w / tᵀt``, ``q = wᵀs / tᵀt``; deflating ``X ← X − t pᵀ`` gives
``C ← C − (tᵀt) p pᵀ`` and ``s ← s − p (wᵀs)``. The rotations ``R = W (PᵀW)⁻¹`` map a
standardised row to its scores ``t = x_s R``, and the prediction is ``ŷ = ȳ + x_s R q``.

**Scaling convention (raw activation space).** Standardising is ``x_s = (x − μ)/σ``, so the
raw-space gradient of the score ``t_j`` is ``r_j / σ`` (elementwise), and the gradient of the
prediction is ``coef = (R q) / σ``; not ``w · σ`` (which the reference code uses to steer;
:attr:`PLSProbe.covariance_direction` gives it, for the paper's protocol).
:meth:`PLSProbe.subspace` is the span of the score gradients ``{r_j / σ}``, orthonormalised in
order (column 0 is the unit gradient of the first score: "the first PLS direction"), with the
training mean ``μ`` as origin. Moving ``x`` orthogonally to this subspace leaves every PLS
score, hence the prediction, unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.checks import check_features, check_finite, check_int
from steerlab.config import check_fraction, check_nonnegative, check_positive, check_types, require
from steerlab.distributed import all_reduce_, all_reduce_moments_
from steerlab.probes.pls_probe import PLSProbe, PLSScores

logger = logging.getLogger(__name__)

__all__ = [
    "PLSConfig",
    "PLSFitter",
    "PLSProbe",
    "PLSResult",
    "PLSScores",
    "fit_pls",
    "fit_pls_store",
    "split_ids",
]


@dataclass
class PLSConfig:
    """How a PLS probe is fitted and evaluated."""

    n_components: int | None = None
    """Number of PLS components; None chooses it by cross-validation up to ``max_components``."""
    max_components: int = 10
    """Largest number of components tried by cross-validation."""
    n_folds: int = 5
    """Cross-validation folds (over the non-test rows)."""
    test_fraction: float = 0.1
    """Fraction of rows (or groups) held out for the reported R² and MAE (the paper: 10%)."""
    seed: int = 0
    """Seed of the row → split hash."""
    cv_tol: float = 0.005
    """Parsimony: choose the smallest number of components whose CV R² is within ``cv_tol`` of
    the best (0 picks the best exactly)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "n_components", "max_components")
        require(self, "n_folds", self.n_folds >= 2, ">= 2")
        check_fraction(self, "test_fraction")
        check_nonnegative(self, "cv_tol", "seed")


# --- splits -----------------------------------------------------------------------------------


def split_ids(keys: Tensor, *, n_folds: int, test_fraction: float, seed: int = 0) -> Tensor:
    """Deterministic split of rows by a hash of their key: folds ``0..n_folds-1``, test = ``n_folds``.

    The key is the global row index (or a group id, so a group never straddles splits). A
    splitmix64 hash of ``key`` and ``seed`` gives ``u`` uniform in ``[0, 1)``; ``u <
    test_fraction`` is the test split and the rest is cut into equal-probability folds. Being a
    function of the key alone, the split is the same in memory and streamed from a store.
    """
    k = np.asarray(keys.detach().cpu().numpy(), dtype=np.int64).astype(np.uint64)
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as splitmix64 intends
        z = k * golden + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    fold = np.minimum(((u - test_fraction) / (1 - test_fraction) * n_folds), n_folds - 1)
    out = np.where(u < test_fraction, n_folds, np.floor(fold)).astype(np.int64)
    return torch.from_numpy(out)


# --- moments ----------------------------------------------------------------------------------


class _Moments:
    """Float64 count, means and centred scatter of ``(x, y)``, merged with Chan et al.'s rule."""

    def __init__(self, d: int, dtype: torch.dtype, device: Any) -> None:
        kw = {"dtype": dtype, "device": device}
        self.n = 0
        self.mean_x = torch.zeros(d, **kw)
        self.mean_y = torch.zeros((), **kw)
        self.S_xx = torch.zeros(d, d, **kw)
        self.S_xy = torch.zeros(d, **kw)
        self.S_yy = torch.zeros((), **kw)

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add rows ``x [m, d]``, ``y [m]`` (batched Welford: exact for any batch split)."""
        m = x.shape[0]
        if m == 0:
            return
        self.n += m
        dx = x - self.mean_x
        dy = y - self.mean_y
        self.mean_x += dx.sum(0) / self.n
        self.mean_y += dy.sum() / self.n
        dx2 = x - self.mean_x
        dy2 = y - self.mean_y
        self.S_xx.addmm_(dx.T, dx2)
        self.S_xy += dx.T @ dy2
        self.S_yy += dy @ dy2

    @staticmethod
    def merge(parts: Iterable[_Moments]) -> _Moments:
        """The moments of the union: ``S = S_a + S_b + δδᵀ n_a n_b / n``."""
        parts = list(parts)
        out = _Moments(parts[0].mean_x.shape[0], parts[0].mean_x.dtype, parts[0].mean_x.device)
        for p in parts:
            if p.n == 0:
                continue
            n = out.n + p.n
            dx = p.mean_x - out.mean_x
            dy = p.mean_y - out.mean_y
            f = out.n * p.n / n
            out.S_xx = out.S_xx + p.S_xx + f * torch.outer(dx, dx)
            out.S_xy = out.S_xy + p.S_xy + f * dx * dy
            out.S_yy = out.S_yy + p.S_yy + f * dy * dy
            out.mean_x = out.mean_x + dx * (p.n / n)
            out.mean_y = out.mean_y + dy * (p.n / n)
            out.n = n
        return out

    def all_reduce_(self) -> None:
        """Merge every rank's moments in place (:func:`steerlab.distributed.all_reduce_moments_`)."""
        self.n = all_reduce_moments_(
            self.n,
            [self.mean_x, self.mean_y],
            [(self.S_xx, 0, 0), (self.S_xy, 0, 1), (self.S_yy, 1, 1)],
        )

    def sse(self, coef: Tensor, intercept: Tensor) -> Tensor:
        """``Σ (y − b0 − coefᵀx)²`` over these rows, from the moments alone."""
        bias = self.mean_y - intercept - coef @ self.mean_x
        return self.n * bias**2 + self.S_yy - 2 * coef @ self.S_xy + coef @ self.S_xx @ coef


def _scale_of(m: _Moments) -> Tensor:
    """Population standard deviation, 1 where a feature is constant (as ``StandardScaler``)."""
    sd = (torch.diagonal(m.S_xx).clamp_min(0) / m.n).sqrt()
    # sklearn's _handle_zeros_in_scale: scales below 10·eps are treated as zero variance
    return torch.where(sd < 10 * torch.finfo(sd.dtype).eps, torch.ones_like(sd), sd)


def _nipals(C: Tensor, s: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """PLS1 NIPALS on standardised scatter ``C`` and cross-product ``s``: ``(W, P, q)``."""
    d = C.shape[0]
    C = (C + C.T) / 2  # accumulated round-off leaves the scatter slightly non-symmetric
    tol = float(torch.diagonal(C).sum()) * d * torch.finfo(C.dtype).eps
    W, P, q = [], [], []
    for j in range(k):
        norm = torch.linalg.vector_norm(s)
        w = s / norm
        tt = w @ C @ w
        if not norm > 0 or not tt > tol:
            raise ValueError(
                f"only {j} PLS components are identifiable (x has too little rank left, or y is "
                f"fully explained); asked for {k}. Use fewer components or more samples."
            )
        w = w * torch.sign(w[w.abs().argmax()])  # sklearn's _svd_flip_1d convention
        p = C @ w / tt
        ws = w @ s
        W.append(w)
        P.append(p)
        q.append(ws / tt)
        C = C - tt * torch.outer(p, p)
        s = s - p * ws
    return torch.stack(W, 1), torch.stack(P, 1), torch.stack(q)


# --- the frozen probe --------------------------------------------------------------------------


# --- the fitter --------------------------------------------------------------------------------


class PLSResult(NamedTuple):
    """A fitted probe with its cross-validation curve and held-out scores."""

    probe: PLSProbe
    """Fitted on every non-test row with the chosen number of components."""
    n_components: int
    """Chosen (or given) number of components."""
    cv_r2: list[float]
    """Pooled cross-validated R² for ``1..len(cv_r2)`` components (empty if not cross-validated)."""
    test: PLSScores
    """Held-out R², MAE and MSE (``nan`` MAE when only moments were available)."""
    n_train: int
    """Rows the final probe was fitted on."""


class PLSFitter:
    """Streams the float64 moments of ``(x, y)`` per split and builds :class:`PLSProbe` s.

    Each row is assigned to a cross-validation fold or to the test split by
    :func:`split_ids` of its global row index (or of its group), so streaming in any batch
    sizes gives the same fit. Memory is ``(n_folds + 1)`` scatter matrices of ``d x d``.
    """

    def __init__(
        self,
        d: int,
        config: PLSConfig | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        """Args:
        d: width of the activations.
        config: fitting settings (:class:`PLSConfig`).
        dtype: accumulator dtype (float64 recommended).
        device: accumulator device.
        """
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        self.d = d
        self.config = config or PLSConfig()
        self.parts = [_Moments(d, dtype, device) for _ in range(self.config.n_folds + 1)]
        self.n_seen = 0

    @classmethod
    def fit(
        cls, x: Tensor, y: Tensor, config: PLSConfig | None = None, *, groups: Tensor | None = None
    ) -> PLSFitter:
        """A fitter updated once with all of ``x [n, d]`` and ``y [n]``."""
        x2 = check_features(x, min_samples=2)
        return cls(x2.shape[1], config, device=x2.device).update(x2, y, groups=groups)

    @torch.no_grad()
    def update(
        self, x: Float[Tensor, "n d"], y: Tensor, *, groups: Tensor | None = None
    ) -> PLSFitter:
        """Add rows ``x [n, d]`` with targets ``y [n]`` (and optional group ids ``[n]``)."""
        p0 = self.parts[0].mean_x
        x2 = check_features(x, d=self.d).to(p0)
        n = x2.shape[0]
        if not isinstance(y, Tensor):
            y = torch.as_tensor(y)
        if y.numel() != n or not (y.ndim <= 1 or tuple(y.shape) == (n, 1)):
            raise ValueError(
                f"y has shape {tuple(y.shape)}; PLS probes fit one target: give [n]={n} values"
            )
        yy = y.reshape(-1).to(p0)
        check_finite(yy, "y")
        if groups is None:
            keys = torch.arange(self.n_seen, self.n_seen + n)
        else:
            keys = torch.as_tensor(groups).reshape(-1).long().cpu()
            if keys.shape[0] != n:
                raise ValueError(f"groups has {keys.shape[0]} entries for {n} rows")
        cfg = self.config
        split = split_ids(keys, n_folds=cfg.n_folds, test_fraction=cfg.test_fraction,
                          seed=cfg.seed).to(x2.device)  # fmt: skip
        for i, part in enumerate(self.parts):
            sel = split == i
            if sel.any():
                part.update(x2[sel], yy[sel])
        self.n_seen += n
        return self

    @torch.no_grad()
    def all_reduce_(self) -> PLSFitter:
        """Merge the moments of every rank (``torch.distributed``), in place; returns ``self``.

        Each rank streams its own rows; a row's split (fold or test) is :func:`split_ids` of
        its key, which by default is the row's index *in this fitter's stream*. For the merged
        fit to equal a one-process fit on all rows, give each row its global key: pass
        ``groups=`` the global row indices (or the group ids) to :meth:`update`. Afterwards
        every rank holds the moments of all rows per split (Chan's rule), so :meth:`probe`,
        :meth:`cv_r2` and :meth:`result` equal the one-process ones to float64 round-off.
        Call it once, on every rank, after the last update. A no-op in one process.
        """
        for part in self.parts:
            part.all_reduce_()
        seen = torch.tensor([float(self.n_seen)], dtype=torch.float64)
        self.n_seen = int(all_reduce_(seen).item())
        return self

    @property
    def n_train(self) -> int:
        """Non-test rows seen."""
        return sum(p.n for p in self.parts[:-1])

    @property
    def n_test(self) -> int:
        """Held-out rows seen."""
        return self.parts[-1].n

    def _build(self, m: _Moments, k: int) -> PLSProbe:
        if m.n < 2:
            raise ValueError(f"PLS needs at least 2 training samples, got {m.n}")
        if not bool(m.S_yy > 0):
            raise ValueError("y is constant over the training samples: nothing to fit")
        if k > m.n - 1:
            raise ValueError(f"n_components={k} needs at least {k + 1} training samples, got {m.n}")
        if k > self.d:
            raise ValueError(f"n_components={k} exceeds the number of features d={self.d}")
        sd = _scale_of(m)
        C = m.S_xx / torch.outer(sd, sd)
        s = m.S_xy / sd
        W, P, q = _nipals(C, s, k)
        probe = PLSProbe(m.mean_x, sd, W, P, q, m.mean_y.clone(), torch.zeros_like(q))
        # coordinates c = Bᵀ(x − μ) regressed on y: slope Bᵀ S_xy / S_yy (centred moments)
        B = probe.subspace().basis.to(m.S_xy)
        slope = B.T @ m.S_xy / m.S_yy
        return dataclasses.replace(probe, coord_slope=slope)

    def cv_r2(self, max_components: int | None = None) -> list[float]:
        """Pooled cross-validated R² ``1 − Σ_f SSE_f / Σ_f SST_f`` for 1, 2, ... components.

        Each fold's probe is fitted (standardiser included) on the other folds' moments and
        scored on the fold's moments exactly. Stops early at the largest identifiable number.
        """
        folds = self.parts[:-1]
        if sum(f.n > 0 for f in folds) < 2:
            raise ValueError(
                f"cross-validation needs rows in at least 2 folds; got {self.n_train} rows"
            )
        K = max_components or self.config.max_components
        smallest_train = min(self.n_train - f.n for f in folds if f.n > 0)
        K = min(K, self.d, smallest_train - 1)
        if K < 1:
            raise ValueError(f"too few training samples ({self.n_train}) to cross-validate")
        sse = torch.zeros(K, dtype=folds[0].S_yy.dtype)
        sst = 0.0
        for i, f in enumerate(folds):
            if f.n == 0:
                continue
            train = _Moments.merge(p for j, p in enumerate(folds) if j != i)
            full = self._build(train, K) if bool(train.S_yy > 0) else None
            if full is None:
                raise ValueError("y is constant within a training split: nothing to fit")
            for k in range(1, K + 1):
                # the first k columns of a K-component NIPALS fit are the k-component fit
                Rk = full.x_weights[:, :k] @ torch.linalg.pinv(
                    full.x_loadings[:, :k].T @ full.x_weights[:, :k]
                )
                coef = (Rk @ full.y_loadings[:k]) / full.scale
                b0 = full.y_mean - coef @ full.mean
                sse[k - 1] += f.sse(coef, b0).cpu()
            sst += float(f.S_yy)
        return (1 - sse / sst).tolist()

    def probe(self, n_components: int | None = None) -> PLSProbe:
        """The probe fitted on every non-test row (``n_components`` or the CV choice)."""
        k = n_components or self.config.n_components
        cv: list[float] = []
        if k is None:
            cv = self.cv_r2()
            best = float(np.nanmax(cv))
            k = next(i for i, r in enumerate(cv) if r >= best - self.config.cv_tol) + 1
        train = _Moments.merge(self.parts[:-1])
        probe = self._build(train, k)
        meta = {"n_components": k, "cv_r2": cv, "n_train": train.n,
                "config": dataclasses.asdict(self.config)}  # fmt: skip
        return dataclasses.replace(probe, meta=meta)

    def result(self, n_components: int | None = None) -> PLSResult:
        """Probe, CV curve and the held-out R²/MSE from the test moments (MAE is ``nan``:
        it needs the rows; :func:`fit_pls` and :func:`fit_pls_store` fill it in)."""
        probe = self.probe(n_components)
        t = self.parts[-1]
        if t.n < 2:
            raise ValueError(
                f"the test split holds {t.n} rows; raise test_fraction or give more samples"
            )
        sse = float(t.sse(probe.coef.to(t.S_xy), probe.intercept.to(t.S_xy)))
        r2 = 1 - sse / float(t.S_yy) if float(t.S_yy) > 0 else float("nan")
        scores = PLSScores(r2, float("nan"), sse / t.n, t.n)
        return PLSResult(
            probe, probe.n_components, probe.meta["cv_r2"], scores, probe.meta["n_train"]
        )


def _with_mae(res: PLSResult, abs_err_sum: float) -> PLSResult:
    s = res.test
    test = PLSScores(s.r2, abs_err_sum / s.n, s.mse, s.n)
    meta = {**res.probe.meta, "test": test._asdict()}
    return res._replace(test=test, probe=dataclasses.replace(res.probe, meta=meta))


def fit_pls(
    x: Float[Tensor, "n d_model"],
    y: Tensor,
    config: PLSConfig | None = None,
    *,
    groups: Tensor | None = None,
    meta: dict[str, Any] | None = None,
) -> PLSResult:
    """Fit a PLS probe on activations in memory, choosing components by CV; score held out.

    Args:
        x: ``[n, d_model]`` activations (one row per entity / sentence).
        y: ``[n]`` numeric targets.
        config: :class:`PLSConfig` (components, folds, test fraction, seed).
        groups: optional ``[n]`` group ids: rows of one group share a split.
        meta: extra JSON info stored on the probe (site, model id, target name, ...).
    """
    x2 = check_features(x, min_samples=2)
    yt = torch.as_tensor(y)
    cfg = config or PLSConfig()
    fitter = PLSFitter.fit(x2, yt, cfg, groups=groups)
    res = fitter.result()
    keys = torch.arange(x2.shape[0]) if groups is None else torch.as_tensor(groups).reshape(-1)
    test = (split_ids(keys, n_folds=cfg.n_folds, test_fraction=cfg.test_fraction, seed=cfg.seed)
            == cfg.n_folds).to(x2.device)  # fmt: skip
    pred = res.probe(x2[test])
    abs_sum = float((pred - yt.reshape(-1).to(pred)[test]).abs().sum())
    res = _with_mae(res, abs_sum)
    if meta:
        res = res._replace(probe=dataclasses.replace(res.probe, meta={**res.probe.meta, **meta}))
    return res


def fit_pls_store(
    store: Any,
    site: str,
    y: Tensor,
    config: PLSConfig | None = None,
    *,
    groups: Tensor | None = None,
    batch_size: int = 8192,
    meta: dict[str, Any] | None = None,
) -> PLSResult:
    """Fit a PLS probe streamed from an activation store (two passes, O(d²) memory).

    The first pass accumulates per-split moments; the second computes the held-out MAE. Rows
    are read in store order, so ``y`` (and ``groups``) align with the store's rows. To fit on
    the rows loaded in memory instead, use ``fit_pls(store.site(site).to_tensor(), y)``: the
    same split, the same probe.

    Args:
        store: an :class:`~steerlab.capture.store.ActivationStore`.
        site: the site to read.
        y: ``[len(store)]`` targets, one per stored row.
        config: :class:`PLSConfig`.
        groups: optional ``[len(store)]`` group ids.
        batch_size: rows read at a time.
        meta: extra JSON info stored on the probe.
    """
    check_int(batch_size, "batch_size")
    yt = torch.as_tensor(y).reshape(-1)
    if yt.shape[0] != len(store):
        raise ValueError(f"y has {yt.shape[0]} values for a store of {len(store)} rows")
    cfg = config or PLSConfig()
    fitter = PLSFitter(store.sites[site], cfg)
    g = None if groups is None else torch.as_tensor(groups).reshape(-1)

    def batches() -> Iterable[tuple[int, Tensor]]:
        start = 0
        for xb in store.iter_batches(site, batch_size, shuffle=False, drop_last=False,
                                     dtype=torch.float64):  # fmt: skip
            yield start, xb
            start += xb.shape[0]

    for start, xb in batches():
        sl = slice(start, start + xb.shape[0])
        fitter.update(xb, yt[sl], groups=None if g is None else g[sl])
    res = fitter.result()
    abs_sum = 0.0
    for start, xb in batches():
        sl = slice(start, start + xb.shape[0])
        keys = torch.arange(sl.start, sl.stop) if g is None else g[sl]
        test = split_ids(keys, n_folds=cfg.n_folds, test_fraction=cfg.test_fraction,
                         seed=cfg.seed) == cfg.n_folds  # fmt: skip
        if test.any():
            abs_sum += float((res.probe(xb[test]) - yt[sl][test].to(xb)).abs().sum())
    res = _with_mae(res, abs_sum)
    if meta:
        res = res._replace(probe=dataclasses.replace(res.probe, meta={**res.probe.meta, **meta}))
    return res
