"""Two gloo processes under ``torchrun`` against one process: fits, capture, SAE training, resume.

Two launches of ``python -m torch.distributed.run --standalone --nproc_per_node=2`` on
``worker.py`` (tiny inputs from ``scenarios.py``) serve every test: the first runs every
scenario and ends with a capture whose rank 1 is killed; the second resumes that capture. The
tests compare what rank 0 wrote with a one-process computation here. References are independent of the distributed code paths: the
one-process fitters, ``Subspace.from_pca`` on all rows, ``capture_to_store`` in one process,
``train`` in one process.

Tolerances: the distributed fits and DDP differ from one process only by the order of float
additions (Chan's merge of per-rank moments; DDP's gradient all-reduce), so float64 results
agree to ~1e-12 relative, and the checks allow 1e-9. Capture runs the same batches through the
same float32 model, but the workers use one thread and this process two, which may change
float32 reduction order: activations agree to 1e-5 (relative to their scale ~1), token ids,
document ids, positions and sink marks exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from steerlab.capture import capture_to_store
from steerlab.capture.store import MANIFEST_NAME, SINK, ActivationStore
from steerlab.erasure.leace import LeaceFitter
from steerlab.models import load_model
from steerlab.probes.pls import PLSFitter
from steerlab.saes.formats import PARAM_NAMES, load_sae
from steerlab.saes.init import StatsFitter, initialize_
from steerlab.saes.sae import build_sae
from steerlab.saes.train import CheckpointMismatchError, train
from steerlab.steering.vectors import VectorFitter
from steerlab.subspace import Subspace

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import scenarios as sc  # noqa: E402

ROOT = HERE.parents[1]
F64 = {"rtol": 1e-9, "atol": 1e-9}  # float64 merge / all-reduce round-off (module docstring)
F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 activations under another thread count


def torchrun(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 worker.py ARGS`` with this checkout's steerlab."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "worker.py"), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return sc.tiny_model_dir(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="module")
def reference_store(model_dir, tmp_path_factory):
    """The one-process capture of the same windows."""
    handle = load_model(str(model_dir), device="cpu")
    path = tmp_path_factory.mktemp("one_process") / "store"
    ids = sc.capture_tokens(len(handle.tokenizer))
    return capture_to_store(handle, ids, sc.SITES, str(path), batch_size=sc.CAPTURE["batch_size"],
                            shard_tokens=sc.CAPTURE["shard_tokens"])  # fmt: skip


@pytest.fixture(scope="module")
def run_all(model_dir, tmp_path_factory):
    """One torchrun launch of the ``all`` scenario: its output folder and the SAE store.

    The launch fails by design (rank 1 kills itself in the last capture); everything before
    succeeded if rank 0 wrote the ``done`` marker.
    """
    out = tmp_path_factory.mktemp("torchrun_all")
    store = sc.sae_store(tmp_path_factory.mktemp("sae_store") / "store")
    proc = torchrun("all", str(out), str(model_dir), str(store), check=False)
    if not (out / "done").is_file():
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    assert proc.returncode != 0, "rank 1 was to kill itself in the last capture"
    return out, store


@pytest.fixture(scope="module")
def reference_training(run_all):
    """The one-process training of the same SAEs on the same store (with metrics)."""
    _, store_dir = run_all
    return train(ActivationStore(store_dir), sc.sae_configs(), sc.train_config(None),
                 callback=lambda p: None)  # fmt: skip


def assert_same_store(
    store: ActivationStore,
    ref: ActivationStore,
    sites: tuple[str, ...] = tuple(sc.SITES.split(",")),
) -> None:
    assert store.n_tokens == ref.n_tokens and store.manifest["complete"]
    assert store.manifest["n_sequences"] == ref.manifest["n_sequences"]
    for k in ("model_id", "sites", "dtype", "fingerprints", "config"):
        assert store.manifest[k] == ref.manifest[k], k
    got, want = store[:], ref[:]
    for name in sites:
        torch.testing.assert_close(got[name], want[name], **F32)
    for name in ("token_ids", "doc_ids", "positions", SINK):
        assert torch.equal(got[name], want[name]), name
    # shards listed in corpus order, with their global sequence ranges
    ends = [(s["seq_start"], s["seq_end"]) for s in store.manifest["shards"]]
    assert ends[0][0] == 0 and ends[-1][1] == ref.manifest["n_sequences"]
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))


def test_distributed_fits_equal_one_process(run_all):
    out, _ = run_all
    got = load_file(str(out / "fits.safetensors"))
    info = json.loads((out / "fits.json").read_text())
    x, labels, y, pairs = sc.fit_data()
    leace = LeaceFitter.fit(x, labels)
    assert info["leace_n"] == len(x)
    torch.testing.assert_close(got["leace_P"], leace.eraser.P, **F64)
    torch.testing.assert_close(got["leace_bias"], leace.eraser.bias, **F64)
    res = PLSFitter.fit(x, y, sc.PLS).result()
    assert info["pls_k"] == res.n_components
    torch.testing.assert_close(torch.tensor(info["pls_cv_r2"]), torch.tensor(res.cv_r2), **F64)
    torch.testing.assert_close(got["pls_coef"], res.probe.coef, **F64)
    torch.testing.assert_close(got["pls_intercept"][0], res.probe.intercept, **F64)
    assert info["pls_test_r2"] == pytest.approx(res.test.r2, rel=1e-9)
    pca = Subspace.from_pca(x, k=3)  # float64 in, float64 out
    torch.testing.assert_close(got["pca_basis"], pca.basis, **F64)
    torch.testing.assert_close(got["pca_api_basis"], pca.basis, **F64)
    st = StatsFitter(sc.D, keep=200).update(x).finalize()
    assert info["stats_n"] == st.n
    torch.testing.assert_close(got["stats_mean"], st.mean, **F64)
    torch.testing.assert_close(got["stats_cov"], st.cov, **F64)
    # the ranks' samples in rank order: the first rows of the one-process stream
    assert torch.equal(got["stats_sample"], st.sample)
    for method in ("mean_diff", "pca_diff"):
        vf = VectorFitter("resid_post.1", sc.D, method).update(pairs[:, 0], pairs[:, 1])
        torch.testing.assert_close(got[method], vf.directions(), **F64)
        torch.testing.assert_close(got["norms"], vf.mean_norm, **F64)
    assert info["n_pairs"] == len(x)
    torch.testing.assert_close(got["pca_api_origin"], pca.origin, **F64)


def test_distributed_fit_variants_equal_one_process(run_all):
    """The same launch: orthogonal LEACE on real targets, a labelled two-layer mean difference,
    PCA without centring chosen by ``var`` with an empty rank, and the SAE's active-subspace
    init from the merged statistics."""
    out, _ = run_all
    got = load_file(str(out / "fits.safetensors"))
    info = json.loads((out / "fits.json").read_text())
    x, labels, y, pairs = sc.fit_data()
    orth = LeaceFitter.fit(x, sc.real_targets(x, labels, y), method="orth")
    assert info["orth_n"] == len(x)
    torch.testing.assert_close(got["orth_P"], orth.eraser.P, **F64)
    torch.testing.assert_close(got["orth_bias"], orth.eraser.bias, **F64)
    vf = VectorFitter("resid_post.1,resid_post.2", sc.D, "mean_diff")
    vf.update_labelled(torch.stack([x, pairs[:, 0]], 1), labels > 0)
    assert info["labelled_n"] == [vf.n_pos, vf.n_neg]
    torch.testing.assert_close(got["labelled"], vf.directions(), **F64)
    torch.testing.assert_close(got["labelled_norms"], vf.mean_norm, **F64)
    lop = Subspace.from_pca(x, var=0.9, center=False)
    assert info["lopsided_meta"]["n_samples"] == len(x)
    assert got["lopsided_basis"].shape == lop.basis.shape  # the same k chosen by var
    torch.testing.assert_close(got["lopsided_basis"], lop.basis, **F64)
    torch.testing.assert_close(got["lopsided_origin"], lop.origin, **F64)  # zero: not centred
    sae = build_sae(sc.asi_config())
    stats = StatsFitter(sc.D, keep=200).update(x).finalize()
    report = initialize_(sae, stats, generator=torch.Generator().manual_seed(0))
    assert info["asi_report"]["d_active"] == report.d_active < sc.D
    assert info["asi_report"]["encoder_scale"] == pytest.approx(report.encoder_scale, rel=1e-9)
    for n, want in _params(sae).items():
        torch.testing.assert_close(got[f"asi_{n}"], want, **F64, msg=lambda m, n=n: f"{n}: {m}")


def test_distributed_capture_equals_one_process(run_all, reference_store):
    out, _ = run_all
    store = ActivationStore(out / "store")
    assert_same_store(store, reference_store)
    d = store.manifest["distributed"]
    assert d["world_size"] == 2 and [r["rank"] for r in d["ranks"]] == [0, 1]
    assert {s["rank"] for s in store.manifest["shards"]} == {0, 1}
    assert not list((out / "store").glob("manifest.rank-*.json"))  # superseded by the commit
    store.verify()  # every listed shard has the checksum the manifest gives


def _params(sae) -> dict[str, torch.Tensor]:
    return {n: getattr(sae, n).detach() for n in PARAM_NAMES}


@pytest.mark.parametrize("mode", ["data", "modules"])
def test_sae_training_equals_one_process(run_all, reference_training, mode):
    """2 ranks (interrupted at step 4, resumed from the step-3 checkpoint) == 1 process."""
    out, store_dir = run_all
    store = ActivationStore(store_dir)
    ref = reference_training
    summary = json.loads((out / f"sae_{mode}.json").read_text())
    assert (summary["steps"], summary["tokens"]) == (ref.steps, ref.tokens)
    assert summary["sink_rows"] == ref.sink_rows
    for name, sae in ref.saes.items():
        got = _params(load_sae(out / f"sae_{mode}" / name))
        for n, want in _params(sae).items():
            torch.testing.assert_close(got[n], want, **F64, msg=lambda m, n=n: f"{name}.{n}: {m}")
    # metrics of the whole batch; in modules mode rank 0 reports its own SAEs (0 and 2)
    names = list(ref.saes) if mode == "data" else ["topk_x", "relu_x"]
    assert sorted(summary["last_metrics"]) == sorted(names)
    for name in names:
        for key in ("fvu", "l0", "dead_frac", "auxk_loss", "l1_loss"):
            got_m, want_m = summary["last_metrics"][name][key], ref.last_metrics[name][key]
            assert got_m == pytest.approx(want_m, rel=1e-5, abs=1e-7), (name, key)
    # the checkpoint (written by rank 0) records the world size: one process refuses it
    with pytest.raises(CheckpointMismatchError, match="parallel"):
        train(store, sc.sae_configs(), sc.train_config(out / f"ckpt_{mode}"))


def test_killed_capture_resumes_per_rank(run_all, model_dir, reference_store):
    """Rank 1 died (SIGKILL) after 2 of its 3 batches; the rerun finishes each rank's part."""
    out, _ = run_all
    store_dir = out / "killed"
    assert not (store_dir / MANIFEST_NAME).exists()  # nothing committed: no store for readers
    with pytest.raises(FileNotFoundError):
        ActivationStore(store_dir)
    part = json.loads((store_dir / "manifest.rank-00001.json").read_text())
    assert not part["complete"] and part["shards"]
    kept = {s["file"]: (store_dir / s["file"]).stat() for s in part["shards"]}
    torchrun("capture", str(out), str(model_dir))
    store = ActivationStore(store_dir)
    assert_same_store(store, reference_store)
    for name, st in kept.items():  # rank 1's finished shards were kept, not captured again
        now = (store_dir / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name


def test_commands_under_torchrun_equal_one_process(run_all, model_dir, tmp_path, capsys):
    """``torchrun -m steerlab capture`` and ``sae train`` (data-parallel) == the plain commands."""
    from steerlab.cli import main as cli

    out, _ = run_all
    assert cli(sc.cli_capture(model_dir, tmp_path / "store")) == 0
    assert_same_store(ActivationStore(out / "cli_store"), ActivationStore(tmp_path / "store"),
                      sites=("resid_post.1",))  # fmt: skip
    assert cli(sc.cli_sae(tmp_path / "store", tmp_path / "sae")) == 0
    capsys.readouterr()
    got, want = load_sae(out / "cli_sae" / "sae"), load_sae(tmp_path / "sae" / "sae")
    for n, w in _params(want).items():
        # the stores agree to float32 round-off (see F32), so the SAEs trained on them to ~1e-5
        torch.testing.assert_close(_params(got)[n], w, rtol=1e-4, atol=1e-5)
