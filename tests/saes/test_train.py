"""The SAE trainer: learning a known sparse dictionary, exact resume, checkpoints, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.capture.store import ActivationStore, StoreWriter
from steerlab.saes.evals import evaluate
from steerlab.saes.formats import CHECKPOINT_NAME
from steerlab.saes.sae import SaeConfig
from steerlab.saes.train import CheckpointMismatchError, LrSchedule, TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster for tiny matrices
    yield
    torch.set_num_threads(n)


def sparse_data(n: int, d: int, n_atoms: int, s: int, seed: int, offset: float = 2.0):
    """Rows ``x = c D + μ``: ``s`` of ``n_atoms`` unit atoms per row, coefficients in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_atoms, d, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_atoms, generator=g).topk(s, dim=1).indices
    codes = torch.zeros(n, n_atoms).scatter_(1, idx, torch.rand(n, s, generator=g) + 0.5)
    mu = torch.randn(d, generator=g)
    return codes @ D + offset * mu / mu.norm(), D


def write_store(path, acts: dict[str, torch.Tensor], shard_tokens: int = 96) -> ActivationStore:
    n = next(iter(acts.values())).shape[0]
    sites = {s: int(x.shape[1]) for s, x in acts.items()}
    with StoreWriter(path, model_id="tiny", sites=sites, shard_tokens=shard_tokens) as w:
        for i in range(0, n, 32):  # sequences of 32 tokens
            rows = torch.arange(i, min(i + 32, n))
            w.add({s: x[rows] for s, x in acts.items()}, rows, rows // 32, rows % 32, 1)
        w.finish()
    return ActivationStore(path)


def test_train_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="max_tokens"):
        TrainConfig(batch_size=64, max_tokens=10)
    with pytest.raises(ValueError, match="nan_policy"):
        TrainConfig(nan_policy="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="k must satisfy"):
        SaeConfig(d_in=8, d_sae=16, k=16)  # k >= width


def test_learns_a_known_sparse_dictionary(tmp_path, capsys):
    # 64 unit atoms in 32 dims, 3 active per token; a TopK SAE (128 latents, k=4) should
    # reconstruct nearly all variance and find most atoms.
    x, D = sparse_data(4096, 32, 64, 3, seed=0)
    store = write_store(tmp_path / "store", {"resid_post.1": x}, shard_tokens=512)
    configs = [
        SaeConfig(d_in=32, d_sae=128, k=4, site="resid_post.1"),
        SaeConfig(d_in=32, d_sae=128, architecture="relu_l1", l1_coefficient=0.1,
                  site="resid_post.1"),
    ]  # fmt: skip
    cfg = TrainConfig(batch_size=256, max_tokens=256 * 80, lr=1e-2, warmup_steps=10,
                      dead_tokens=2048, log_every=20)  # fmt: skip
    seen = []
    res = train(store, configs, cfg, callback=seen.append)
    assert capsys.readouterr().out == ""  # progress goes to the callback, never to stdout
    assert [p.step for p in seen] == [20, 40, 60, 80]
    assert seen[-1].tokens == 256 * 80 and seen[-1].total_steps == 80
    topk, relu = (res.saes[c.name] for c in configs)
    before = evaluate(type(topk)(topk.cfg), x).fvu  # an untrained SAE of the same shape
    m = evaluate(topk, x)
    # Measured: FVU 0.090 and 59/64 atoms at cosine > 0.9 after 80 steps; bounds leave margin.
    assert m.fvu < 0.15 < before
    assert m.l0 <= 4
    W = topk.W_dec.detach()
    recovered = (D @ W.T).max(dim=1).values > 0.9
    assert recovered.float().mean() > 0.8
    assert seen[0].metrics[configs[0].name]["fvu"] > seen[-1].metrics[configs[0].name]["fvu"]
    mr = evaluate(relu, x)
    assert mr.fvu < 0.5 and mr.l0 < 32  # the L1 baseline learns and is sparse-ish


def test_several_saes_from_one_read(tmp_path, monkeypatch):
    x, _ = sparse_data(512, 16, 32, 2, seed=1)
    store = write_store(tmp_path / "s", {"a.0": x, "b.1": x[:, :8] * 2})
    calls = []
    orig = ActivationStore.iter_batches

    def counting(self, site, *a, **kw):
        calls.append(site)
        return orig(self, site, *a, **kw)

    monkeypatch.setattr(ActivationStore, "iter_batches", counting)
    configs = [
        SaeConfig(d_in=16, d_sae=32, k=2, site="a.0"),
        SaeConfig(d_in=16, d_sae=64, k=4, site="a.0"),
        SaeConfig(d_in=8, d_sae=32, k=2, site="b.1", init="active_subspace"),
    ]
    res = train(store, configs, TrainConfig(batch_size=64, warmup_steps=2))
    assert res.steps == 512 // 64 and res.tokens == 512
    # one statistics read per site (the sink column rides along), then one shuffled stream
    # feeds all three SAEs
    assert calls == [["a.0", "sink"], ["b.1", "sink"], ["a.0", "b.1", "sink"]]
    assert set(res.saes) == {c.name for c in configs}
    assert res.init_reports[configs[2].name]["method"] == "active_subspace"


def _params_and_state(res):
    out = {}
    for name, sae in res.saes.items():
        for n, p in sae.named_parameters():
            out[f"{name}.{n}"] = p.detach().clone()
    return out


class _Kill(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path):
    x, _ = sparse_data(512, 16, 32, 2, seed=2)
    store = write_store(tmp_path / "s", {"a.0": x, "b.1": x[:, 8:] + 1})
    configs = [
        SaeConfig(d_in=16, d_sae=48, k=3, site="a.0", init="active_subspace"),
        SaeConfig(d_in=8, d_sae=24, site="b.1", architecture="relu_l1", init="random"),
    ]

    def cfg(d, **kw):
        # 12 steps of 64 rows cross the epoch boundary (8 batches per epoch); k annealing,
        # warm-up and a short dead window (AuxK on) all run across the interruption.
        base = dict(batch_size=64, max_tokens=64 * 12, warmup_steps=4, k_anneal_steps=6,
                    dead_tokens=128, checkpoint_dir=str(tmp_path / d), checkpoint_every=3)  # fmt: skip
        return TrainConfig(**{**base, **kw})

    full = train(store, configs, cfg("full"))

    def kill_at_7(p):
        if p.step == 7:
            raise _Kill

    with pytest.raises(_Kill):
        train(store, configs, cfg("run", log_every=1), callback=kill_at_7)
    state = json.loads((tmp_path / "run" / CHECKPOINT_NAME / "state.json").read_text())
    assert state["step"] == 6 and state["batches_consumed"] == 6 and not state["complete"]
    resumed = train(store, configs, cfg("run", log_every=5))  # log_every may differ
    assert resumed.steps == full.steps == 12
    a, b = _params_and_state(full), _params_and_state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-exact on the same machine
    # the optimizer and dead-latent state match too (compare the final checkpoints)
    from safetensors.torch import load_file

    for c in configs:
        fa = load_file(str(tmp_path / "full" / CHECKPOINT_NAME / c.name / "optimizer.safetensors"))
        fb = load_file(str(tmp_path / "run" / CHECKPOINT_NAME / c.name / "optimizer.safetensors"))
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    # a complete checkpoint resumes to the same SAEs without training
    again = train(store, configs, cfg("run"))
    assert all(torch.equal(v, _params_and_state(again)[k]) for k, v in b.items())
    # checkpoints hold JSON and safetensors only (nothing pickled), and no temp dirs remain
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".json", ".safetensors") for p in files)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [CHECKPOINT_NAME]


def test_checkpoint_from_another_config(tmp_path):
    x, _ = sparse_data(256, 8, 16, 2, seed=3)
    configs = [SaeConfig(d_in=8, d_sae=16, k=2)]
    cfg = TrainConfig(batch_size=64, warmup_steps=1, checkpoint_dir=str(tmp_path / "c"))
    train(x, configs, cfg)
    with pytest.raises(CheckpointMismatchError, match="sae_configs"):
        train(x, [SaeConfig(d_in=8, d_sae=16, k=3, name=configs[0].name)], cfg)
    with pytest.raises(CheckpointMismatchError, match="train_config"):
        train(x, configs, TrainConfig(batch_size=64, warmup_steps=1, lr=1e-3,
                                      checkpoint_dir=str(tmp_path / "c")))  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match="source"):
        train(x[:128], configs, cfg)
    train(x[:128], configs, cfg, resume=False)  # starting afresh overwrites it


def test_resume_after_a_crash_between_the_renames(tmp_path):
    # write_checkpoint renames checkpoint -> .checkpoint.old, then tmp -> checkpoint; a crash
    # in between leaves only .checkpoint.old, which resume must use.
    x, _ = sparse_data(512, 8, 16, 2, seed=7)
    configs = [SaeConfig(d_in=8, d_sae=16, k=2)]
    tc = TrainConfig(batch_size=64, warmup_steps=1, checkpoint_dir=str(tmp_path / "c"),
                     checkpoint_every=2)  # fmt: skip
    full = train(x, configs, tc)
    ckpt = tmp_path / "c" / CHECKPOINT_NAME
    ckpt.rename(tmp_path / "c" / f".{CHECKPOINT_NAME}.old")
    again = train(x, configs, tc)  # the complete checkpoint is found under its old name
    assert again.steps == full.steps
    assert all(
        torch.equal(p, q)
        for p, q in zip(full.saes[configs[0].name].parameters(),
                        again.saes[configs[0].name].parameters())
    )  # fmt: skip


def test_nan_rows_are_skipped_and_counted(tmp_path):
    x, _ = sparse_data(256, 8, 16, 2, seed=4)
    x[[3, 70, 71, 200]] = float("nan")
    x[100, 2] = float("inf")
    configs = [SaeConfig(d_in=8, d_sae=16, k=2)]
    res = train(x, configs, TrainConfig(batch_size=64, warmup_steps=1))
    assert res.skipped_rows == {"x": 5}  # one epoch sees every row once (init stats skip too)
    sae = next(iter(res.saes.values()))
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    with pytest.raises(ValueError, match="NaN or inf"):
        train(x, configs, TrainConfig(batch_size=64, nan_policy="error", init_tokens=2))
    with pytest.raises(ValueError, match="NaN or inf"):  # already while fitting the init
        train(x, configs, TrainConfig(batch_size=64, nan_policy="error"))


def test_bad_input(tmp_path):
    x, _ = sparse_data(256, 8, 16, 2, seed=5)
    store = write_store(tmp_path / "s", {"a.0": x})
    with pytest.raises(KeyError, match="no site 'mlp_out.3'"):
        train(store, [SaeConfig(d_in=8, d_sae=16, k=2, site="mlp_out.3")])
    with pytest.raises(ValueError, match="width"):
        train(store, [SaeConfig(d_in=9, d_sae=16, k=2, site="a.0")])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(store, [SaeConfig(d_in=8, d_sae=16, k=2, site="a.0")], TrainConfig(batch_size=512))
    with pytest.raises(ValueError, match="unique"):
        train(store, [SaeConfig(d_in=8, d_sae=16, k=2, site="a.0")] * 2)


def test_k_annealing_and_dead_latents():
    x, _ = sparse_data(1024, 8, 16, 2, seed=6)
    cfg = SaeConfig(d_in=8, d_sae=64, k=2, init="random")
    seen = []
    tc = TrainConfig(batch_size=64, warmup_steps=1, k_anneal_steps=4, dead_tokens=128,
                     log_every=1, lr=1e-2)  # fmt: skip
    train(x, [cfg], tc, callback=seen.append)
    ks = [p.metrics[cfg.name]["k"] for p in seen]
    # k0 = min(4k, d_sae // 2) = 8, falling linearly to 2 over 4 steps (step s uses k(s))
    assert ks[:6] == [8.0, 6.0, 5.0, 4.0, 2.0, 2.0]  # round(8 − 6 s / 4): 8, 6.5→6, 5, 3.5→4, 2
    dead = [p.metrics[cfg.name]["dead_frac"] for p in seen]
    aux = [p.metrics[cfg.name]["auxk_loss"] for p in seen]
    assert dead[0] == 0.0  # exact (0 / d_sae): nothing is dead before the 128-token window
    assert max(dead) > 0 and max(aux) > 0  # random init leaves dead latents; AuxK engages


def test_lr_schedule_closed_form():
    # 100 steps, 5% warm-up, 20% decay: (s+1)/5 for s < 5, then 1, then (100 - s)/20
    sched = LrSchedule.of(TrainConfig(), 100)
    assert sched == LrSchedule(5, 20, 100)
    want = [min(1.0, (s + 1) / 5) * min(1.0, (100 - s) / 20) for s in range(100)]
    got = [sched(s) for s in range(100)]
    assert got == pytest.approx(want, rel=0, abs=1e-15)  # the same float ops in another order
    # exact at 4 and 79: min(1.0, 5/5) * min(1.0, 95/20 or 21/20) is 1.0 * 1.0
    assert got[4] == 1.0 and got[79] == 1.0 and got[80] == pytest.approx(1.0) and got[99] > 0
    # a 44-step run warms up over 3 steps (the old default, 1,000 steps, never got past 4.4%)
    assert LrSchedule.of(TrainConfig(), 44).warmup == 3
    assert LrSchedule.of(TrainConfig(warmup_steps=7, decay_frac=0.0), 44) == LrSchedule(7, 0, 44)
    assert LrSchedule(0, 0, 10)(3) == 1.0  # exact: no warm-up, no decay: 1.0 * 1.0
    with pytest.raises(ValueError, match="warmup_frac"):
        TrainConfig(warmup_frac=1.5)
    with pytest.raises(ValueError, match="sinks"):
        TrainConfig(sinks="skip")  # type: ignore[arg-type]


def test_sink_rows_are_left_out_of_training(tmp_path):
    x, _ = sparse_data(1024, 8, 16, 2, seed=7)
    x[::32] *= 50.0  # the first row of every 32-token sequence: a massive sink
    store = write_store(tmp_path / "s", {"a.0": x})
    sinks = store.sink_mask()
    assert int(sinks.sum()) == 1024 // 32
    cfg = SaeConfig(d_in=8, d_sae=16, k=2, site="a.0")
    seen = []
    res = train(store, [cfg], TrainConfig(batch_size=64, log_every=1), callback=seen.append)
    assert res.sink_rows == {"a.0": 32} and res.tokens == 1024  # one epoch, every row read
    # the init mean (b_dec) is the mean of the first init_tokens non-sink rows: all of them here
    b_dec0 = train(store, [cfg], TrainConfig(batch_size=64, max_tokens=64, lr=1e-12)).saes
    torch.testing.assert_close(
        b_dec0[cfg.name].b_dec.double(), x[~sinks].double().mean(0), atol=1e-5, rtol=0
    )  # a 1e-12 lr moves b_dec by ~1e-12; the rest is float32 round-off of the copy
    assert seen[-1].saes[cfg.name] is res.saes[cfg.name]
    kept = train(store, [cfg], TrainConfig(batch_size=64, sinks="keep"))
    assert kept.sink_rows == {"a.0": 0}
