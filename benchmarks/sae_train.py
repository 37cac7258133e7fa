"""SAE trainers measured fairly: each at its own settings and at the best lr of a shared sweep,
on the same stored activations, scored on a held-out store with the attention sinks left out.

    python benchmarks/sae_train.py --store runs/sae_store2m --eval-store runs/sae_eval \\
        --site resid_post.6 --tokens 2000000 --width 4608 --k 32 --batch 4096 --repeats 3 \\
        --sweep 3e-4,1e-3,3e-3,1e-2 --json runs/bench_sae.json

Protocol. ``--tokens`` training rows (sink rows dropped, see
:func:`steerlab.capture.store.sink_rows`) are read once, in one shuffled order, into memory;
every run makes one pass over them in the same order. Runs alternate between trainers inside
each repeat (``A B C A B C ...``), so a change of machine load hits all of them alike; repeat
``r`` uses seed ``r`` for every trainer. Scores come from ``--eval-store`` (other documents than
the training store): FVU about the mean (float64), L0 and dead latents (never fired there) on
its non-sink rows, and FVU with the sink rows included as a second column. A curve of held-out
FVU against tokens seen is recorded at about 12 points per run (their evaluation time is not
counted as training time). Speed is training tokens per second of the pass (initialisation and
curve evaluations excluded), reported as the median over repeats with the min-max spread; a
speed comparison stands only where every trainer's repeats lie within 10% of their median.

Trainers, each at its own recommended settings (``own``):

- ``steerlab``: :func:`steerlab.saes.train` with its defaults (only width, k and batch given).
- ``sparsify``: EleutherAI sparsify 1.3 (PyPI ``eai-sparsify``) run the way its ``Trainer``
  runs by default, replicated step for step on stored activations with its own classes:
  ``SparseCoder`` (encoder ``nn.Linear`` init, ``W_dec`` = the encoder's rows normalised),
  ``b_dec`` = the first batch's mean, the decoder renormalised before every forward, loss FVU,
  AuxK off (its default ``auxk_alpha = 0``), the parallel decoder gradient removed, and its
  default optimiser: ``ScheduleFreeWrapper(SignSGD, momentum=0.95)`` at
  ``5e-3 / sqrt(width / 2**14)`` with no schedule; scored at the schedule-free average
  (``optimizer.eval()``, as its trainer does before saving).
- ``sparsify_adam``: the same with its Adam path: ``2e-4 / sqrt(width / 2**14)``, linear
  warm-up over 1,000 steps then linear decay to 0 (``get_linear_schedule_with_warmup``).
- ``saelens``: SAELens 6 ``TopKTrainingSAE`` with its defaults (decoder rows at norm 0.1,
  ``W_enc = W_decᵀ``, ``b_dec = 0``, pre-activations scaled by the decoder norms, AuxK with
  coefficient 1 and a 1,000-step dead window, loss = summed squared error per token) trained
  like its ``SAETrainer``: Adam at ``3e-4``, constant, no warm-up, gradient norm clipped at 1.
- ``saelens_mean``: the same with ``b_dec`` initialised to the mean of the first batch.
- ``dense``: a plain TopK loop (dense ``[batch, width]`` code, autograd through dense matmuls,
  Adam at Gao et al.'s ``2e-4 / sqrt(width / 2**14)``, constant, tied init, ``b_dec`` = first
  batch mean): the floor.

``sweep``: every trainer again at each lr of ``--sweep`` (its own optimiser and schedule, only
the lr changed), one seed; the best lr by FVU on a validation slice of the held-out store
(disjoint from the rows that are reported) is then run ``--repeats`` times.

The peers are benchmark-only installs (never dependencies of steerlab); a side environment
that sees steerlab's packages:

    python3 -m venv runs/venv-peers
    runs/venv-peers/bin/pip install --no-deps eai-sparsify==1.3.3 schedulefree==1.4.1 natsort \\
        simple-parsing docstring-parser   # plus SAELens as in scripts/peers.sh
    echo "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \\
        > runs/venv-peers/lib/python3.*/site-packages/zz_main.pth

Trainers whose package is missing are reported as skipped. The script also measures the
machine's GEMM rate and states the step's matmul limit: the encoder GEMM (``2·d·width`` FLOPs
per token forward) plus the sparse decoder and sparse backward (``~10·k·d``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from steerlab.capture.store import SINK, ActivationStore
from steerlab.saes import MetricsFitter, SaeConfig, TrainConfig, lr_for_width, train

Reconstruct = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``x -> (x̂, [width] firing counts)`` of a trained SAE."""


@dataclass
class Run:
    """What one training run gives back."""

    reconstruct: Reconstruct
    tokens: int
    train_s: float
    init_s: float
    curve: list[tuple[int, float]] = field(default_factory=list)


class Probe:
    """Held-out FVU at token counts spread geometrically over the run (time kept apart)."""

    def __init__(self, X: Tensor, width: int, total: int, points: int = 12) -> None:
        self.X, self.width = X, width
        marks = {int(total * 2.0 ** (-i)) for i in range(points)}
        self.marks = sorted(m for m in marks if m > 0)
        self.curve: list[tuple[int, float]] = []
        self.seconds = 0.0

    def due(self, tokens: int) -> bool:
        return bool(self.marks) and tokens >= self.marks[0]

    def __call__(self, tokens: int, reconstruct: Reconstruct) -> None:
        t0 = time.perf_counter()
        while self.marks and tokens >= self.marks[0]:
            self.marks.pop(0)
        self.curve.append((tokens, score(reconstruct, self.X, self.width)["fvu"]))
        self.seconds += time.perf_counter() - t0


def load_train(store: ActivationStore, site: str, n: int, seed: int, sinks: str) -> Tensor:
    """``n`` rows of one shuffled pass of the store (sink rows dropped unless ``keep``)."""
    rows, got = [], 0
    for b in store.iter_batches([site, SINK], 8192, seed=seed, drop_last=False):
        x = b[site] if sinks == "keep" else b[site][~b[SINK]]
        rows.append(x)
        got += x.shape[0]
        if got >= n:
            break
    X = torch.cat(rows)
    if X.shape[0] < n:
        raise SystemExit(f"{store.path} gives {X.shape[0]} training rows, fewer than {n}")
    return X[:n].contiguous()


def load_eval(store: ActivationStore, site: str) -> tuple[Tensor, Tensor]:
    """All rows of the held-out store in store order, and their sink mask."""
    b = next(store.iter_batches([site, SINK], store.n_tokens, shuffle=False, drop_last=False))
    return b[site].contiguous(), b[SINK]


def score(reconstruct: Reconstruct, X: Tensor, width: int) -> dict:
    """FVU, L0 and dead fraction of ``reconstruct`` on ``X`` (float64 sums)."""
    fit = MetricsFitter(X.shape[1], width)
    with torch.no_grad():
        for i in range(0, X.shape[0], 4096):
            x = X[i : i + 4096]
            x_hat, counts = reconstruct(x)
            fit.update(x, x_hat, counts)
    m = fit.finalize()
    return {"fvu": m.fvu, "l0": m.l0, "dead_frac": m.dead_frac}


def _counts(idx: Tensor, acts: Tensor, width: int) -> Tensor:
    fired = idx[acts > 0]
    return torch.zeros(width, dtype=torch.long).index_add_(0, fired, torch.ones_like(fired))


def _batches(X: Tensor, batch: int):
    for s in range(X.shape[0] // batch):
        yield s, X[s * batch : (s + 1) * batch]


# --- steerlab ---------------------------------------------------------------------------------


def run_steerlab(X: Tensor, args, lr: float | None, seed: int, probe: Probe) -> Run:
    cfg = SaeConfig(d_in=X.shape[1], d_sae=args.width, k=args.k)
    n = (X.shape[0] // args.batch) * args.batch
    tcfg = TrainConfig(batch_size=args.batch, max_tokens=n, lr=lr, seed=seed, log_every=1,
                       sinks="keep")  # fmt: skip  # the rows are sink-free already

    def rec_of(sae):
        def rec(x):
            acts, idx = sae.encode(x)
            return sae.decode(acts, idx), _counts(idx, acts, args.width)

        return rec

    def on_progress(p) -> None:
        if probe.due(p.tokens):
            probe(p.tokens, rec_of(p.saes[cfg.name]))

    t0 = time.perf_counter()
    res = train(X, [cfg], tcfg, callback=on_progress)
    wall = time.perf_counter() - t0
    train_s = wall - res.init_s - probe.seconds
    return Run(rec_of(res.saes[cfg.name]), res.tokens, train_s, res.init_s)


# --- dense floor ------------------------------------------------------------------------------


def run_dense(X: Tensor, args, lr: float | None, seed: int, probe: Probe) -> Run:
    g = torch.Generator().manual_seed(seed)
    d, n, k = X.shape[1], args.width, args.k
    t0 = time.perf_counter()
    W_dec = torch.randn(n, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec = W_dec.requires_grad_()
    W_enc = W_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(n, requires_grad=True)
    b_dec = X[: args.batch].mean(0).clone().requires_grad_()
    lr = lr or lr_for_width(n, 2e-4)  # Gao et al.'s Adam lr: the plain loop's own setting
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr, eps=6.25e-10)
    init_s = time.perf_counter() - t0

    def forward(x):
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return z @ W_dec + b_dec, idx, vals.relu()

    def rec(x):
        x_hat, idx, acts = forward(x)
        return x_hat, _counts(idx, acts, n)

    t0 = time.perf_counter()
    for s, x in _batches(X, args.batch):
        x_hat, _, _ = forward(x)
        loss = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        if probe.due((s + 1) * args.batch):
            probe((s + 1) * args.batch, rec)
    train_s = time.perf_counter() - t0 - probe.seconds
    steps = X.shape[0] // args.batch
    return Run(rec, steps * args.batch, train_s, init_s)


# --- sparsify ---------------------------------------------------------------------------------


def _sparsify():
    try:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.config import SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
        from sparsify.sparse_coder import SparseCoder
    except ImportError:
        return None
    return SparseCoder, SparseCoderConfig, SignSGD, ScheduleFreeWrapper


def run_sparsify(X: Tensor, args, lr: float | None, seed: int, probe: Probe, *,
                 optimizer: str = "signum") -> Run | None:  # fmt: skip
    mod = _sparsify()
    if mod is None:
        return None
    SparseCoder, SparseCoderConfig, SignSGD, ScheduleFreeWrapper = mod
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)  # its Trainer seeds torch before building each coder
    t0 = time.perf_counter()
    sae = SparseCoder(X.shape[1], SparseCoderConfig(num_latents=args.width, k=args.k),
                      device="cpu", dtype=torch.float32)  # fmt: skip
    steps = X.shape[0] // args.batch
    scale = math.sqrt(args.width / 2**14)
    sched = None
    if optimizer == "signum":
        lr = lr or 5e-3 / scale
        opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]),
                                  momentum=0.95)  # fmt: skip
        opt.train()
    else:
        lr = lr or 2e-4 / scale
        opt = torch.optim.Adam([{"params": sae.parameters(), "lr": lr}])
        sched = get_linear_schedule_with_warmup(opt, 1000, steps)
    init_s = time.perf_counter() - t0

    def rec(x):
        out = sae(x)
        return out.sae_out, _counts(out.latent_indices, out.latent_acts, args.width)

    def evaluated(fn):  # score the schedule-free average x, as its trainer saves it
        if optimizer == "signum":
            opt.eval()
        try:
            return fn()
        finally:
            if optimizer == "signum":
                opt.train()

    t0 = time.perf_counter()
    for s, x in _batches(X, args.batch):
        if s == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        if probe.due((s + 1) * args.batch):
            evaluated(lambda s=s: probe((s + 1) * args.batch, rec))
    train_s = time.perf_counter() - t0 - probe.seconds
    if optimizer == "signum":
        opt.eval()  # final weights: the average
    return Run(rec, steps * args.batch, train_s, init_s)


# --- SAELens ----------------------------------------------------------------------------------


def _saelens():
    try:
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    except ImportError:
        return None
    return TopKTrainingSAE, TopKTrainingSAEConfig, TrainStepInput


def run_saelens(X: Tensor, args, lr: float | None, seed: int, probe: Probe, *,
                b_dec_mean: bool = False) -> Run | None:  # fmt: skip
    mod = _saelens()
    if mod is None:
        return None
    TopKTrainingSAE, TopKTrainingSAEConfig, TrainStepInput = mod
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    cfg = TopKTrainingSAEConfig(d_in=X.shape[1], d_sae=args.width, k=args.k)
    sae = TopKTrainingSAE(cfg)
    if b_dec_mean:
        sae.b_dec.data = X[: args.batch].mean(0).clone()
    opt = torch.optim.Adam(sae.parameters(), lr=lr or 3e-4, betas=(0.9, 0.999))
    dead_window = 1000  # its LanguageModelSAERunnerConfig.dead_feature_window (steps)
    since_fired = torch.zeros(args.width)
    init_s = time.perf_counter() - t0

    def rec(x):
        z = sae.encode(x)
        vals, idx = z.topk(args.k, dim=-1, sorted=False)
        return sae.decode(z), _counts(idx, vals, args.width)

    t0 = time.perf_counter()
    for s, x in _batches(X, args.batch):
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=since_fired > dead_window,
            n_training_steps=s, is_logging_step=False))  # fmt: skip
        with torch.no_grad():
            since_fired += 1
            since_fired[out.feature_acts.bool().any(0)] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if probe.due((s + 1) * args.batch):
            probe((s + 1) * args.batch, rec)
    train_s = time.perf_counter() - t0 - probe.seconds
    sae.eval()
    steps = X.shape[0] // args.batch
    return Run(rec, steps * args.batch, train_s, init_s)


TRAINERS: dict[str, Callable[..., Run | None]] = {
    "steerlab": run_steerlab,
    "sparsify": run_sparsify,
    "sparsify_adam": lambda *a: run_sparsify(*a, optimizer="adam"),
    "saelens": run_saelens,
    "saelens_mean": lambda *a: run_saelens(*a, b_dec_mean=True),
    "dense": run_dense,
}


# --- the machine's limit ----------------------------------------------------------------------


def gemm_rate(batch: int, d: int, width: int, repeats: int = 5) -> float:
    """FLOP/s of the encoder's ``[batch, d] @ [d, width]`` GEMM (best of ``repeats``)."""
    a, b = torch.randn(batch, d), torch.randn(d, width)
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * batch * d * width / best


def step_flops_per_token(d: int, width: int, k: int) -> float:
    """Encoder GEMM forward (``2·d·width``) plus the sparse parts (~``10·k·d``): the encoder's
    sparse backward (input and weight gradients) and the sparse decoder forward and backward."""
    return 2 * d * width + 10 * k * d


# --- main -------------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "within_10pct": all(abs(v - med) <= 0.1 * med for v in values)}  # fmt: skip


class RunLog:
    """Finished runs, written to ``--json`` after every run so an interrupted benchmark resumes.

    A run is reused only when its trainer, lr, seed and every setting that changes it (store,
    site, tokens, width, k, batch, sinks) match; its printed line is repeated with "(reused)".
    """

    KEYS = ("store", "eval_store", "site", "tokens", "width", "k", "batch", "sinks")

    def __init__(self, path: str | None, args: argparse.Namespace, resume: bool) -> None:
        self.path, self.settings = path, {k: getattr(args, k) for k in self.KEYS}
        self.runs: list[dict] = []
        if resume and path and os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, dict) or not isinstance(old.get("done", []), list):
                raise SystemExit(f"{path}: not a benchmark result (no 'done' list); "
                                 "remove it or pass another --json")  # fmt: skip
            self.runs = [r for r in old.get("done", []) if r.get("settings") == self.settings]

    def find(self, name: str, lr: float | None, seed: int) -> dict | None:
        for r in self.runs:
            if (r["trainer"], r["lr"], r["seed"]) == (name, lr, seed):
                return r
        return None

    def add(self, out: dict, result: dict) -> None:
        self.runs.append({**out, "settings": self.settings})
        self.save(result)

    def save(self, result: dict) -> None:
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump({**result, "done": self.runs}, f, indent=2)
            os.replace(tmp, self.path)


def _line(out: dict, note: str = "") -> None:
    lr = out["lr"]
    print(f"  {out['trainer']:>13} lr {lr if lr else 'own':>7} seed {out['seed']}: "
          f"{out['tokens_per_s']:>7,.0f} tok/s  FVU {out['fvu']:.4f} (with sinks "
          f"{out['fvu_with_sinks']:.4f})  L0 {out['l0']:.1f}  dead {100 * out['dead_frac']:.1f}%"
          f"  load {out['load_avg_1min']:.2f}{note}", flush=True)  # fmt: skip


def _one(name, X, args, lr, seed, E_curve, E_val, E_rep, E_all, log=None, result=None):
    """Train and score one run (or reuse it from ``log``); ``None`` if the trainer is missing."""
    if log is not None and (old := log.find(name, lr, seed)) is not None:
        out = {k: v for k, v in old.items() if k != "settings"}
        _line(out, "  (reused)")
        return out
    probe = Probe(E_curve, args.width, (X.shape[0] // args.batch) * args.batch)
    torch.manual_seed(seed)
    run = TRAINERS[name](X, args, lr, seed, probe)
    if run is None:
        return None
    rep = score(run.reconstruct, E_rep, args.width)
    out = {
        "trainer": name, "lr": lr, "seed": seed, "tokens": run.tokens,
        "tokens_per_s": run.tokens / run.train_s, "train_s": run.train_s, "init_s": run.init_s,
        "val_fvu": score(run.reconstruct, E_val, args.width)["fvu"], **rep,
        "fvu_with_sinks": score(run.reconstruct, E_all, args.width)["fvu"],
        "curve": probe.curve, "load_avg_1min": os.getloadavg()[0],
    }  # fmt: skip
    _line(out)
    if log is not None and result is not None:
        log.add(out, result)
    return out


def summarise(runs: list[dict], label: str) -> dict:
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["trainer"], []).append(r)
    table = {}
    print(f"\n{label}: trainer, lr, tok/s median [min-max], held-out FVU (no sinks) per repeat")
    for name, rs in by.items():
        speed = _spread([r["tokens_per_s"] for r in rs])
        fvus = [r["fvu"] for r in rs]
        table[name] = {"lr": rs[0]["lr"], "tokens_per_s": speed, "fvu": fvus,
                       "fvu_median": statistics.median(fvus),
                       "fvu_with_sinks": [r["fvu_with_sinks"] for r in rs],
                       "l0": statistics.median(r["l0"] for r in rs),
                       "dead_frac": statistics.median(r["dead_frac"] for r in rs)}  # fmt: skip
        table[name]["curve"] = _median_curve([r["curve"] for r in rs])
        ok = "" if speed["within_10pct"] else "  (repeats differ by >10%: no speed claim)"
        print(f"  {name:>13}  lr {rs[0]['lr'] or 'own':>7}  {speed['median']:>7,.0f} "
              f"[{speed['min']:,.0f}-{speed['max']:,.0f}] tok/s  FVU "
              f"{', '.join(f'{v:.4f}' for v in fvus)}  (with sinks "
              f"{statistics.median(table[name]['fvu_with_sinks']):.4f}){ok}")  # fmt: skip
    print("  held-out FVU against training tokens (median over repeats):")
    for name, row in table.items():
        pts = "  ".join(f"{t / 1e3:,.0f}k {f:.3f}" for t, f in row["curve"])
        print(f"  {name:>13}  {pts}")
    return table


def _median_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Pointwise median of curves recorded at the same token counts."""
    n = min(len(c) for c in curves)
    return [(curves[0][i][0], statistics.median(c[i][1] for c in curves)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="runs/sae_store2m", help="training store")
    ap.add_argument("--eval-store", default="runs/sae_eval", help="held-out store")
    ap.add_argument("--site", default="resid_post.6")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="training rows (one pass)")
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trainers", default="steerlab,sparsify,saelens,saelens_mean")
    ap.add_argument("--sweep", default="3e-4,1e-3,3e-3,1e-2", help="'' skips the sweep")
    ap.add_argument("--sweep-trainers", default=None, help="default: --trainers")
    ap.add_argument("--no-own", action="store_true", help="skip the own-settings runs")
    ap.add_argument("--sinks", default="drop", choices=["drop", "keep"],
                    help="sink rows in the training data")  # fmt: skip
    ap.add_argument("--val-rows", type=int, default=8192, help="held-out rows for lr selection")
    ap.add_argument("--curve-rows", type=int, default=4096, help="held-out rows for curves")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--json",
        default=None,
        help="write the results here (after every run, so --resume can go on)",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="reuse the finished runs recorded in --json with the same settings",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    X = load_train(ActivationStore(args.store), args.site, args.tokens, 0, args.sinks)
    E_all, sinks = load_eval(ActivationStore(args.eval_store), args.site)
    E = E_all[~sinks]
    if E.shape[0] <= args.val_rows + args.curve_rows:
        raise SystemExit(f"the eval store has {E.shape[0]} non-sink rows; need more than "
                         f"--val-rows + --curve-rows = {args.val_rows + args.curve_rows}")  # fmt: skip
    E_val, E_rep = E[: args.val_rows], E[args.val_rows :]
    E_curve = E_rep[: args.curve_rows]
    rate = gemm_rate(args.batch, X.shape[1], args.width)
    limit = rate / step_flops_per_token(X.shape[1], args.width, args.k)
    print(f"{X.shape[0]:,} training rows of {args.site} ({args.sinks} sinks) from {args.store}; "
          f"{E_rep.shape[0]:,} held-out rows reported (+{args.val_rows:,} for lr selection, "
          f"{int(sinks.sum()):,} sink rows apart) from {args.eval_store}; width {args.width}, "
          f"k {args.k}, batch {args.batch}, {torch.get_num_threads()} threads; load "
          f"{os.getloadavg()}")  # fmt: skip
    print(f"GEMM {rate / 1e9:.1f} GFLOP/s: matmul limit of a TopK step "
          f"{limit:,.0f} tok/s (encoder GEMM + sparse decoder/backward FLOPs)")  # fmt: skip
    names = args.trainers.split(",")
    result: dict = {"args": vars(args), "gemm_flops": rate, "matmul_limit_tok_s": limit}
    log = RunLog(args.json, args, args.resume)
    evals = (E_curve, E_val, E_rep, E_all, log, result)
    if not args.no_own:
        runs = []
        for r in range(args.repeats):
            for name in names:
                out = _one(name, X, args, None, r, *evals)
                if out is None:
                    print(f"  {name}: not installed, skipped")
                    continue
                runs.append(out)
        result["own"] = {"runs": runs, "table": summarise(runs, "own settings")}
    if args.sweep:
        lrs = [float(v) for v in args.sweep.split(",")]
        sweep_names = (args.sweep_trainers or args.trainers).split(",")
        sweep = [o for lr in lrs for n in sweep_names
                 if (o := _one(n, X, args, lr, 0, *evals)) is not None]  # fmt: skip
        best = {n: min((o for o in sweep if o["trainer"] == n), key=lambda o: o["val_fvu"])["lr"]
                for n in {o["trainer"] for o in sweep}}  # fmt: skip
        print("best lr by validation FVU:", best)
        runs = [o for o in sweep if o["lr"] == best[o["trainer"]]]
        for r in range(1, args.repeats):
            runs += [o for n in sweep_names if n in best
                     if (o := _one(n, X, args, best[n], r, *evals)) is not None]  # fmt: skip
        result["sweep"] = {"runs": sweep, "best_lr": best,
                           "table": summarise(runs, "each at the best lr of the sweep")}  # fmt: skip
        result["best_lr_runs"] = runs
    if "own" in result and {"steerlab", "sparsify"} <= set(result["own"]["table"]):
        s, o = result["own"]["table"]["steerlab"], result["own"]["table"]["sparsify"]
        print(f"\nown settings: steerlab / sparsify speed x"
              f"{s['tokens_per_s']['median'] / o['tokens_per_s']['median']:.2f}, FVU "
              f"{s['fvu_median']:.4f} vs {o['fvu_median']:.4f}; steerlab at "
              f"{s['tokens_per_s']['median'] / limit:.0%} of the matmul limit")  # fmt: skip
    log.save(result)


if __name__ == "__main__":
    main()
