"""The intervention algebra against float64 closed forms, save/load per kind, bad input.

All algebra checks run in float64 on d <= 16 with O(1)–O(10) entries: round-off is ~d·eps64 ≈
4e-15 relative, so ATOL = 1e-10 leaves a wide margin while any real error would be O(1).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import steerlab.artifacts
from steerlab.erasure.leace import LeaceEraser
from steerlab.erasure.scrub import EraserEdit
from steerlab.interventions import (
    KINDS,
    Ablate,
    AddVector,
    Affine,
    Compose,
    Constant,
    LoReFT,
    LowRankEdit,
    MLPGate,
    Positions,
    SetCoords,
    TokenView,
    load_intervention,
    scored,
)
from steerlab.saes.sae import SaeConfig, build_sae
from steerlab.saes.splice import Replace, SaeSplice
from steerlab.sites import SiteError
from steerlab.steering.msrs import MSRS
from steerlab.subspace import Subspace

ATOL = 1e-10
PROPS = settings(max_examples=40, deadline=None)
SITE = "resid_post.3"


@st.composite
def setups(draw, max_d: int = 16):
    """A float64 subspace (rank r, random origin), a vector and activations h [2, 3, d]."""
    d = draw(st.integers(2, max_d))
    r = draw(st.integers(1, d - 1))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sub = Subspace.from_vectors(torch.randn(r, d, generator=g, dtype=torch.float64),
                                torch.randn(d, generator=g, dtype=torch.float64))  # fmt: skip
    v = torch.randn(d, generator=g, dtype=torch.float64)
    h = torch.randn(2, 3, d, generator=g, dtype=torch.float64) * 5
    return sub, v, h, g


def _complement(sub: Subspace, x: torch.Tensor) -> torch.Tensor:
    return x - x @ sub.basis @ sub.basis.T  # (I − B Bᵀ) x, B with columns


@PROPS
@given(setups(), st.floats(-10, 10), st.sampled_from([None, 0.5, 30.0]))
def test_add_vector_closed_form(s, alpha, rel):
    _, v, h, _ = s
    iv = AddVector(v, alpha, SITE, relative_to=rel)
    expected = h + alpha * (rel or 1.0) * v / v.norm()
    assert torch.allclose(iv.edit(h), expected, atol=ATOL)
    # the algebra's general form h + Bᵀ(f(h) − B h) with B = v̂ᵀ, f = B h + α s gives the same
    assert torch.allclose(LowRankEdit.edit(iv, h), expected, atol=ATOL * 100)
    raw = AddVector(v, alpha, SITE, normalize=False)
    assert torch.allclose(raw.edit(h), h + alpha * v, atol=ATOL)
    assert torch.allclose(LowRankEdit.edit(raw, h), h + alpha * v, atol=ATOL * 100)


@PROPS
@given(setups())
def test_identities(s):
    sub, v, h, g = s
    assert torch.equal(AddVector(v, 0.0, SITE)(h), h)  # α = 0: bit-for-bit identity
    f = Affine(h.shape[-1], sub.k).double()
    gated = LowRankEdit(sub, f, 0.0, site=SITE)  # gate = 0
    assert torch.equal(gated(h), h)
    assert torch.equal(
        LowRankEdit(sub, f, None, site=SITE)(h, torch.zeros(2, 3, dtype=torch.bool)), h
    )


@PROPS
@given(setups(), st.sampled_from(["zero", "mean", "tensor"]))
def test_ablate(s, to):
    sub, _, h, g = s
    mu = torch.randn(h.shape[-1], generator=g, dtype=torch.float64)
    iv = Ablate(sub, mu if to == "tensor" else to, site=SITE)
    out = iv.edit(h)
    target = {"zero": torch.zeros_like(mu), "mean": sub.origin, "tensor": mu}[to]
    B = sub.basis
    assert torch.allclose(out @ B, (target @ B).expand(2, 3, -1), atol=ATOL)
    assert torch.allclose(iv.edit(out), out, atol=ATOL)  # idempotent
    assert torch.allclose(_complement(sub, out - h), torch.zeros_like(h), atol=ATOL)
    if to == "mean":  # erasing to the origin is Subspace.erase
        assert torch.allclose(out, sub.erase(h), atol=ATOL)
        assert torch.allclose(sub.project(out), torch.zeros(2, 3, sub.k, dtype=h.dtype), atol=ATOL)


@PROPS
@given(setups())
def test_set_coords(s):
    sub, _, h, g = s
    c = torch.randn(sub.k, generator=g, dtype=torch.float64) * 3
    out = SetCoords(sub, c, SITE).edit(h)
    assert torch.allclose(sub.project(out), c.expand(2, 3, -1), atol=ATOL)
    assert torch.allclose(out, sub.set_coords(h, c), atol=ATOL)
    assert torch.allclose(_complement(sub, out - h), torch.zeros_like(h), atol=ATOL)


def test_loreft_closed_form_and_training():
    d, r = 12, 3
    iv = LoReFT(d, r, SITE).double()
    R = iv.R.weight.detach()
    # R was initialised in float32 (then cast), so it is orthonormal to float32 round-off
    assert torch.allclose(R @ R.T, torch.eye(r, dtype=torch.float64), atol=1e-6)
    h = torch.randn(2, 4, d, dtype=torch.float64)
    W, b = iv.f.weight.detach(), iv.f.bias.detach()
    expected = h + (h @ W.T + b - h @ R.T) @ R
    assert torch.allclose(iv.edit(h), expected, atol=ATOL)
    # trainable: one step moves R and W, and R stays orthonormal (the parametrization)
    opt = torch.optim.SGD(iv.parameters(), lr=0.1)
    iv(h).pow(2).sum().backward()
    opt.step()
    R2 = iv.R.weight.detach()
    assert not torch.allclose(R2, R)
    assert torch.allclose(R2 @ R2.T, torch.eye(r, dtype=torch.float64), atol=1e-6)


def test_gated_low_rank_edit():
    d = 8
    sub = Subspace.from_vectors(torch.randn(3, d, dtype=torch.float64))
    gate = MLPGate(d, 5, [1, 2]).double()
    f = Constant([1.0, 2.0, 3.0]).double()
    iv = LowRankEdit(sub, f, gate, site=SITE)
    h = torch.randn(2, 3, d, dtype=torch.float64)
    B = sub.basis.T
    g = gate(h)
    assert g.shape == (2, 3, 3) and torch.equal(g[..., 1], g[..., 2])  # one gate per group
    expected = h + (g * (torch.tensor([1.0, 2.0, 3.0], dtype=h.dtype) - h @ B.T)) @ B
    assert torch.allclose(iv.edit(h), expected, atol=ATOL)


def test_mask_edits_only_masked_positions():
    h = torch.randn(2, 5, 6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = True
    out = AddVector(torch.ones(6), 2.0, SITE)(h, mask)
    assert torch.equal(out[~mask], h[~mask])
    assert torch.allclose(out[mask], h[mask] + 2.0 / 6**0.5)


def test_compose_is_the_sum():
    d = 10
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    a = Ablate(q[:, :2].T, "zero", site=SITE)
    b = AddVector(q[:, 5], 3.0, SITE, positions="prompt:first_2")
    c = SetCoords(q[:, 7], 1.0, "resid_post.4")
    comp = Compose([a, Compose([b, c])])
    assert comp.sites() == [SITE, "resid_post.4"] and len(comp.leaves()) == 3
    h = torch.randn(1, 4, d, dtype=torch.float64)
    view = TokenView.from_mask(torch.ones(1, 4, dtype=torch.long), 4)
    out = comp.apply_at(SITE, h, view)
    ma = a.positions.mask(view)
    mb = b.positions.mask(view)
    expected = h + (a(h, ma) - h) + (b(h, mb) - h)
    assert torch.allclose(out, expected, atol=ATOL)
    # orthogonal subspaces: the sum equals applying them one after the other
    assert torch.allclose(out, b(a(h, ma), mb), atol=ATOL)
    assert torch.allclose(comp.apply_at("resid_post.4", h, view), c.edit(h), atol=ATOL)


# --- artifacts ------------------------------------------------------------------------------


def _all_kinds(d: int = 16):
    g = torch.Generator().manual_seed(1)
    sub = Subspace.from_vectors(torch.randn(3, d, generator=g), torch.randn(d, generator=g))
    v = torch.randn(d, generator=g)
    lre = LowRankEdit(
        sub, Affine(d, 3), MLPGate(d, 4, [2, 1]), site=SITE, positions="generation:first_2"
    )
    return {
        "add_vector": AddVector(v, 2.5, SITE, "prompt:last_2", relative_to=3.0),
        "ablate": Ablate(sub, "mean", site=SITE, positions=scored(sub, n=2)),
        "set_coords": SetCoords(sub, [1.0, -2.0, 0.5], SITE, "last"),
        "loreft": LoReFT(d, 4, SITE, Positions("prompt", "indices", indices=((0, 1), (2,)))),
        "low_rank_edit": lre,
        "compose": Compose([AddVector(v, 1.0, "resid_post.1"), Ablate(v, "zero", site=SITE)]),
        "eraser_edit": EraserEdit(
            LeaceEraser.fit(torch.randn(64, d, generator=g), torch.arange(64) % 2), SITE, "last"
        ),
        "replace": Replace(torch.randn(d, generator=g), SITE, "prompt:last_2"),
        "sae_splice": SaeSplice(build_sae(SaeConfig(d_in=d, d_sae=32, k=4, site=SITE))),
        # synthetic activations have no chat template: the paper's rule over all prompt tokens
        "msrs": MSRS(d, [1, 2, 1], ["x", "y"], SITE, hidden=4, token_rule="paper"),
    }


def test_every_registered_kind_is_round_tripped():
    # the parametrisation below covers every kind; a new kind must be added to _all_kinds
    assert set(_all_kinds()) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_save_load_round_trip(kind, tmp_path):
    iv = _all_kinds()[kind]
    iv.meta = {"model_id": "test", "note": kind}
    iv.save(tmp_path / kind)
    back = load_intervention(tmp_path / kind)
    assert type(back) is type(iv) and back.to_config() == iv.to_config()
    assert type(steerlab.artifacts.load(tmp_path / kind)) is type(iv)  # the shared registry
    h = torch.randn(2, 5, 16)
    view = TokenView.from_mask(torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]), 5)
    for site in iv.sites():
        assert torch.equal(back.apply_at(site, h, view), iv.apply_at(site, h, view))
    with pytest.raises(ValueError, match="expected"):
        (AddVector if kind != "add_vector" else Ablate).load(tmp_path / kind)


def test_unregistered_component_cannot_be_saved(tmp_path):
    iv = LowRankEdit(torch.eye(4)[:1], torch.nn.Linear(4, 1), None, site=SITE)
    with pytest.raises(TypeError, match="register it"):
        iv.save(tmp_path / "x")


# --- bad input --------------------------------------------------------------------------------


def test_bad_input():
    v = torch.randn(8)
    with pytest.raises(ValueError, match="NaN"):
        AddVector(torch.tensor([1.0, float("nan")]), 1.0, SITE)
    with pytest.raises(ValueError, match="zero"):
        AddVector(torch.zeros(8), 1.0, SITE)
    with pytest.raises(ValueError, match="1-D"):
        AddVector(torch.ones(2, 8), 1.0, SITE)
    with pytest.raises(ValueError, match="finite"):
        AddVector(v, float("inf"), SITE)
    with pytest.raises(SiteError):
        AddVector(v, 1.0, "resid_sideways.3")
    with pytest.raises(ValueError, match="orthonormal"):
        Ablate(torch.ones(2, 8), "zero", site=SITE)
    with pytest.raises(ValueError, match="needs a Subspace"):
        Ablate(v / v.norm(), "mean", site=SITE)
    with pytest.raises(ValueError, match="entries"):
        SetCoords(v / v.norm(), [1.0, 2.0], SITE)
    with pytest.raises(ValueError, match="NaN"):
        SetCoords(v / v.norm(), float("nan"), SITE)
    with pytest.raises(ValueError, match="rank"):
        LoReFT(4, 5, SITE)
    with pytest.raises(ValueError, match="width"):
        AddVector(v, 1.0, SITE)(torch.randn(1, 2, 9))
