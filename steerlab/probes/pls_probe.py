"""The fitted PLS probe artifact (:class:`PLSProbe`) and its held-out scores.

Fitted by :mod:`steerlab.probes.pls` (which re-exports both; its docstring gives the NIPALS
algebra and the raw-space convention: gradients are ``r_j / σ``); saved as ``cfg.json`` +
``pls.safetensors`` (:mod:`steerlab.artifacts`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.artifacts import FrozenArtifact, check_json, register
from steerlab.checks import check_features, check_finite, check_width
from steerlab.subspace import Subspace


class PLSScores(NamedTuple):
    """Held-out quality of a probe."""

    r2: float
    """``1 − SSE/SST`` with SST around the evaluated rows' mean (sklearn's ``r2_score``)."""
    mae: float
    """Mean absolute error, in the target's units."""
    mse: float
    """Mean squared error."""
    n: int
    """Rows evaluated."""


@register("pls")
@dataclass(frozen=True, eq=False, repr=False)
class PLSProbe(FrozenArtifact):
    """A fitted PLS1 probe ``ŷ(x) = ȳ + ((x − μ)/σ) R q`` (El-Shangiti et al. 2025).

    ``W``, ``P``, ``q`` are sklearn's ``x_weights_``, ``x_loadings_`` and ``y_loadings_`` of a
    ``PLSRegression(scale=False)`` fitted after a ``StandardScaler`` (mean ``μ``, population
    scale ``σ``); ``R = W (PᵀW)⁻¹`` is ``x_rotations_``. See the module docstring for the
    raw-space convention (gradients are ``r_j / σ``). ``save(dir)`` / ``PLSProbe.load(dir)``
    (:class:`~steerlab.artifacts.FrozenArtifact`) write ``cfg.json`` and ``pls.safetensors``.
    """

    mean: Float[Tensor, " d_model"]
    """Training mean ``μ`` of the activations."""
    scale: Float[Tensor, " d_model"]
    """Training standard deviation ``σ`` (population, 1 for constant features)."""
    x_weights: Float[Tensor, "d_model k"]
    """``W``: unit weight vector of each component, in standardised space."""
    x_loadings: Float[Tensor, "d_model k"]
    """``P``: loadings (deflation directions), in standardised space."""
    y_loadings: Float[Tensor, " k"]
    """``q``: regression of the target on each score."""
    y_mean: Float[Tensor, ""]
    """Training mean ``ȳ`` of the target."""
    coord_slope: Float[Tensor, " k"]
    """Least-squares slope of the :meth:`subspace` coordinates on the target over the training
    rows: ``coords ≈ coord_slope · (y − ȳ)`` (used by :meth:`coords_for_value`)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable info: site, n_components, cross-validation curve, scores, ..."""

    def __post_init__(self) -> None:
        d, k = self.x_weights.shape
        shapes = {
            "mean": (d,), "scale": (d,), "x_loadings": (d, k), "y_loadings": (k,),
            "y_mean": (), "coord_slope": (k,),
        }  # fmt: skip
        for name, shape in shapes.items():
            t = getattr(self, name)
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {getattr(t, 'shape', t)}")
            check_finite(t, name)
        if bool((self.scale <= 0).any()):
            raise ValueError("scale must be positive")
        check_json(self.meta)

    @property
    def d_model(self) -> int:
        """Width of the activations."""
        return self.x_weights.shape[0]

    @property
    def n_components(self) -> int:
        """Number of PLS components ``k``."""
        return self.x_weights.shape[1]

    @property
    def x_rotations(self) -> Float[Tensor, "d_model k"]:
        """``R = W (PᵀW)⁻¹`` (sklearn's ``x_rotations_``): standardised row → scores."""
        return self.x_weights @ torch.linalg.pinv(self.x_loadings.T @ self.x_weights)

    @property
    def gradients(self) -> Float[Tensor, "k d_model"]:
        """Raw-space gradient of each score, ``r_j / σ`` (row ``j``)."""
        return (self.x_rotations / self.scale[:, None]).T

    @property
    def coef(self) -> Float[Tensor, " d_model"]:
        """Raw-space gradient of the prediction, ``(R q) / σ`` (sklearn's ``coef_`` ≥ 1.5 on the
        pipeline, composed with the scaler)."""
        return (self.x_rotations @ self.y_loadings) / self.scale

    @property
    def intercept(self) -> Float[Tensor, ""]:
        """``ȳ − coef · μ``, so that ``ŷ = intercept + x · coef``."""
        return self.y_mean - self.coef @ self.mean

    def _x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor")
        check_width(x, self.d_model, "x", what="the probe was fitted with")
        return x.to(device=self.mean.device, dtype=torch.promote_types(x.dtype, self.mean.dtype))

    def transform(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... k"]:
        """PLS scores ``t = ((x − μ)/σ) R`` (sklearn's ``transform``)."""
        xs = (self._x(x) - self.mean) / self.scale
        return xs @ self.x_rotations

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, " ..."]:
        """Predicted target ``ŷ = ȳ + t q``."""
        return self.y_mean + self.transform(x) @ self.y_loadings

    def score(self, x: Float[Tensor, "n d_model"], y: Tensor) -> PLSScores:
        """R², MAE and MSE of the predictions on ``(x, y)``."""
        x2 = check_features(x, min_samples=2)
        yy = torch.as_tensor(y).reshape(-1).to(self.mean)
        if yy.shape[0] != x2.shape[0]:
            raise ValueError(f"y has {yy.shape[0]} values but x has {x2.shape[0]} rows")
        check_finite(yy, "y")
        err = self(x2) - yy
        sst = float((yy - yy.mean()).square().sum())
        sse = float(err.square().sum())
        n = x2.shape[0]
        r2 = 1 - sse / sst if sst > 0 else float("nan")
        return PLSScores(r2, float(err.abs().mean()), sse / n, n)

    def subspace(self, k: int | None = None) -> Subspace:
        """The PLS subspace in raw activation space: span of the first ``k`` score gradients.

        Column ``j`` is the ``j``-th gradient ``r_j / σ`` with the earlier ones projected out,
        normalised (Gram-Schmidt in float64); the origin is the training mean ``μ``.
        """
        k = self.n_components if k is None else k
        if not 1 <= k <= self.n_components:
            raise ValueError(f"k must be in [1, {self.n_components}], got {k}")
        meta = {
            "method": "pls", "convention": "gradient r_j/sigma",
            **{key: self.meta[key] for key in ("site", "model_id", "target") if key in self.meta},
        }  # fmt: skip
        G = self.gradients[:k].double()
        sub = Subspace.from_vectors(G, self.mean.double(), meta=meta)
        if sub.k < k:
            raise ValueError(f"the first {k} PLS gradients span only {sub.k} dimensions")
        return sub.to(dtype=self.mean.dtype)

    @property
    def direction(self) -> Float[Tensor, " d_model"]:
        """The unit raw-space gradient of the first PLS score, ``(w₁/σ)/‖w₁/σ‖``."""
        return self.subspace(1).basis[:, 0]

    @property
    def covariance_direction(self) -> Float[Tensor, " d_model"]:
        """The unit vector along ``w₁ · σ``: the direction El-Shangiti et al. (2025) steer along.

        Their code adds ``α · v/‖v‖`` with ``v = x_weights_[:, 0] * scaler.scale_``. The first
        weight vector is ``w₁ ∝ X_sᵀ y``, whose entry ``i`` is ``Cov(x_i, y)/σ_i``, so
        ``w₁ · σ ∝ Cov(x, y)``: the raw covariance of the activations with the target. It is
        not the gradient of the score (``w₁/σ``, :attr:`direction`); the two differ wherever
        the feature scales ``σ_i`` differ, and adding ``w₁ · σ`` also moves the state along
        directions the probe does not read. Unsigned (as sklearn's ``x_weights_``).
        """
        v = self.x_weights[:, 0] * self.scale
        return v / torch.linalg.vector_norm(v)

    def steering_direction(
        self,
        x: Float[Tensor, "n d_model"],
        convention: Literal["gradient", "covariance"] = "gradient",
    ) -> tuple[Float[Tensor, " d_model"], float]:
        """A unit direction signed so that adding it raises the prediction (``u · coef > 0``),
        and the spread of the rows ``x`` along it (the standard deviation of their coordinate).

        ``convention="gradient"`` is :attr:`direction` (``w₁/σ``, the gradient of the first
        score: the smallest move that changes the prediction); ``"covariance"`` is
        :attr:`covariance_direction` (``w₁ · σ``, the paper's). The spread is a natural unit of
        a steering strength: ``AddVector(u, α · unit)`` moves a representation by ``α`` times
        the spread of e.g. the entities the probe was fitted on, and ``α > 0`` raises the value
        (El-Shangiti et al. 2025 step along ``x_weights`` instead, whose sign is arbitrary).
        """
        if convention not in ("gradient", "covariance"):
            raise ValueError(f"convention must be 'gradient' or 'covariance', got {convention!r}")
        x2 = self._x(check_features(x, min_samples=2))
        u = self.direction if convention == "gradient" else self.covariance_direction
        if float(u.double() @ self.coef.double()) < 0:
            u = -u
        unit = float(((x2 - self.mean) @ u.to(x2.dtype)).std())
        return u, unit

    def coords_for_value(self, y: float | Tensor) -> Float[Tensor, "... k"]:
        """Subspace coordinates typical of target value ``y``: ``coord_slope · (y − ȳ)``.

        The training rows' coordinates regressed on the target; with :meth:`subspace` and
        :class:`~steerlab.interventions.kinds.SetCoords` this "sets the PLS coordinates to
        those of a target value".
        """
        yt = torch.as_tensor(y, dtype=self.mean.dtype, device=self.mean.device)
        return (yt - self.y_mean)[..., None] * self.coord_slope

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> PLSProbe:
        """A copy on ``device`` and/or in ``dtype``."""
        kw = {
            f.name: getattr(self, f.name).to(device=device, dtype=dtype)
            for f in dataclasses.fields(self)
            if f.name != "meta"
        }
        return PLSProbe(**kw, meta=dict(self.meta))

    def __repr__(self) -> str:
        return f"PLSProbe(d_model={self.d_model}, n_components={self.n_components})"
