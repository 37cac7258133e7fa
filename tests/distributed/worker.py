"""A torchrun worker for tests/distributed/test_torchrun.py: ``worker.py SCENARIO OUT [ARGS]``.

Scenarios (each rank runs the same code; rank 0 writes the results the test compares with its
one-process references):

- ``all MODEL_DIR SAE_STORE``: the distributed fits, a distributed capture into ``OUT/store``,
  DDP / modules SAE training (interrupted once, then resumed), ``steerlab capture`` and
  ``steerlab sae train`` into ``OUT/cli_store`` and ``OUT/cli_sae``, a ``done`` marker, and last a
  capture into ``OUT/killed`` during which rank 1 kills itself (SIGKILL) after 2 batches, so
  the launch fails;
- ``capture MODEL_DIR``: the distributed capture into ``OUT/killed`` again (it resumes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import scenarios as sc  # noqa: E402

from steerlab import distributed as dist  # noqa: E402
from steerlab.capture import capture_to_store  # noqa: E402
from steerlab.capture.store import ActivationStore  # noqa: E402
from steerlab.cli import main as cli  # noqa: E402
from steerlab.erasure.leace import LeaceFitter  # noqa: E402
from steerlab.models import load_model  # noqa: E402
from steerlab.probes.pls import PLSFitter  # noqa: E402
from steerlab.saes.formats import PARAM_NAMES, save_sae  # noqa: E402
from steerlab.saes.init import StatsFitter, initialize_  # noqa: E402
from steerlab.saes.sae import build_sae  # noqa: E402
from steerlab.saes.train import train  # noqa: E402
from steerlab.steering.vectors import VectorFitter  # noqa: E402
from steerlab.subspace import PCAFitter, Subspace  # noqa: E402


def fits(out: Path) -> None:
    """Every fitter streams this rank's contiguous share in two batches, then all-reduces."""
    x, labels, y, pairs = sc.fit_data()
    share = dist.split_range(len(x))
    rows = torch.arange(share.start, share.stop)
    halves = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    leace = LeaceFitter(sc.D, 3)
    pls = PLSFitter(sc.D, sc.PLS)
    pca = PCAFitter(sc.D)
    stats = StatsFitter(sc.D, keep=200)
    mean_diff = VectorFitter("resid_post.1", sc.D, "mean_diff")
    pca_diff = VectorFitter("resid_post.1", sc.D, "pca_diff")
    for part in halves:
        leace.update(x[part], labels[part])
        pls.update(x[part], y[part], groups=part)  # global row ids: the one-process split
        pca.update(x[part])
        stats.update(x[part])
        mean_diff.update(pairs[part, 0], pairs[part, 1])
        pca_diff.update(pairs[part, 0], pairs[part, 1])
    # variants on the same rows: orthogonal LEACE on two real targets (no Σ_xx to merge) and a
    # labelled mean difference over two layers
    leace_orth = LeaceFitter(sc.D, 2, method="orth")
    labelled = VectorFitter("resid_post.1,resid_post.2", sc.D, "mean_diff")
    z2, two_layers = sc.real_targets(x, labels, y), torch.stack([x, pairs[:, 0]], 1)
    for part in halves:
        leace_orth.update(x[part], z2[part])
        labelled.update_labelled(two_layers[part], labels[part] > 0)
    for f in (leace, pls, pca, stats, mean_diff, pca_diff, leace_orth, labelled):
        f.all_reduce_()
    by_api = Subspace.from_pca(x[rows], k=3, distributed=True)
    # rank 0 holds every row and rank 1 none: an empty rank must contribute nothing
    mine = x if dist.rank() == 0 else x[:0]
    lopsided = Subspace.from_pca(mine, var=0.9, center=False, distributed=True)
    # the SAE init from the merged statistics (the decoder draw is seeded identically)
    asi = build_sae(sc.asi_config())
    asi_report = initialize_(asi, stats.finalize(), generator=torch.Generator().manual_seed(0))
    if dist.rank() != 0:
        return
    orth = leace_orth.eraser
    eraser = leace.eraser
    res = pls.result()
    st = stats.finalize()
    save_file({
        "leace_P": eraser.P.contiguous(), "leace_bias": eraser.bias,
        "pls_coef": res.probe.coef.contiguous(), "pls_intercept": res.probe.intercept.reshape(1),
        "pca_basis": pca.subspace(k=3, dtype=torch.float64).basis.contiguous(),
        "pca_api_basis": by_api.basis.double().contiguous(),
        "stats_mean": st.mean, "stats_cov": st.cov, "stats_sample": st.sample.contiguous(),
        "mean_diff": mean_diff.directions(), "pca_diff": pca_diff.directions(),
        "norms": mean_diff.mean_norm, "pca_api_origin": by_api.origin.double().contiguous(),
        "orth_P": orth.P.contiguous(), "orth_bias": orth.bias,
        "labelled": labelled.directions(), "labelled_norms": labelled.mean_norm,
        "lopsided_basis": lopsided.basis.double().contiguous(),
        "lopsided_origin": lopsided.origin.double().contiguous(),
        **{f"asi_{n}": getattr(asi, n).detach().contiguous() for n in PARAM_NAMES},
    }, str(out / "fits.safetensors"))  # fmt: skip
    info = {"leace_n": leace.n, "pls_cv_r2": res.cv_r2, "pls_k": res.n_components,
            "pls_test_r2": res.test.r2, "stats_n": st.n, "n_pairs": pca_diff.n_pairs,
            "labelled_n": [labelled.n_pos, labelled.n_neg], "orth_n": leace_orth.n,
            "lopsided_meta": lopsided.meta, "asi_report": asi_report._asdict()}  # fmt: skip
    (out / "fits.json").write_text(json.dumps(info))


def capture(store: Path, model_dir: Path, kill_after: int | None = None) -> None:
    handle = load_model(str(model_dir), device="cpu")
    ids = sc.capture_tokens(len(handle.tokenizer))
    done = [0]

    def progress(_n: int) -> None:
        done[0] += 1
        if kill_after is not None and dist.rank() == 1 and done[0] >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, no flush

    capture_to_store(handle, ids, sc.SITES, str(store), batch_size=sc.CAPTURE["batch_size"],
                     shard_tokens=sc.CAPTURE["shard_tokens"], progress=progress)  # fmt: skip


def print_nothing(_progress) -> None:
    """A progress callback, so that the last metrics are computed."""


class _Stop(Exception):
    """Raised by the progress callback to interrupt a run after its first checkpoint."""


def saes(out: Path, store_dir: Path) -> None:
    store = ActivationStore(store_dir)
    for mode in ("data", "modules"):
        ckpt = out / f"ckpt_{mode}"

        def stop(p) -> None:
            if p.step >= 4:
                raise _Stop

        with contextlib.suppress(_Stop):  # interrupted after the checkpoint at step 3 ...
            train(store, sc.sae_configs(), sc.train_config(ckpt, mode), callback=stop)
        dist.barrier()
        # ... and resumed from it
        result = train(store, sc.sae_configs(), sc.train_config(ckpt, mode), callback=print_nothing)
        if dist.rank() == 0:
            for name, sae in result.saes.items():
                save_sae(sae, out / f"sae_{mode}" / name)
            (out / f"sae_{mode}.json").write_text(json.dumps({
                "steps": result.steps, "tokens": result.tokens, "sink_rows": result.sink_rows,
                "last_metrics": result.last_metrics,
            }))  # fmt: skip


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    dist.init(backend="gloo")
    torch.set_num_threads(1)
    if scenario == "all":
        fits(out)
        capture(out / "store", Path(sys.argv[3]))
        saes(out, Path(sys.argv[4]))
        # the commands, as `torchrun -m steerlab capture ...` runs them
        assert cli(sc.cli_capture(Path(sys.argv[3]), out / "cli_store")) == 0
        assert cli(sc.cli_sae(out / "cli_store", out / "cli_sae")) == 0
        dist.barrier()
        if dist.rank() == 0:
            (out / "done").write_text("ok")
        capture(out / "killed", Path(sys.argv[3]), kill_after=2)
    elif scenario == "capture":
        capture(out / "killed", Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    dist.barrier()
    dist.shutdown()


if __name__ == "__main__":
    main()
