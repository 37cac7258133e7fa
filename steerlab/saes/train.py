"""Train several SAEs (sites × widths × k × inits) from one read of an activation store.

Each step reads one shuffled batch holding every needed site
(:meth:`ActivationStore.iter_batches`, whose order depends only on ``(seed, epoch)``) and
takes one Adam step per SAE on the batch's rows of its site:

- loss: FVU (+ ``auxk_alpha`` · AuxK for TopK, + ``λ`` · L1 for ReLU-L1), see
  :mod:`steerlab.saes.sae`;
- learning rate ``base_lr / sqrt(d_sae / 2**14)`` (Gao et al. 2024, sparsify) unless ``lr`` is
  given; linear warm-up over the first ``warmup_frac`` of the run (or ``warmup_steps``), then
  constant, then a linear decay to 0 over the last ``decay_frac`` of the run, so the same
  defaults suit a 40-step run and a 4,000-step one;
- attention-sink rows (the store's ``sink`` column, :func:`steerlab.capture.store.sink_rows`)
  are dropped from the batches (``sinks="drop"``) and from the initialisation statistics;
- TopK decoders: gradient parallel to each row removed before the step, rows renormalised after;
- dead latents: a latent is dead once it has not fired for ``dead_tokens`` tokens; dead latents
  feed the AuxK loss;
- optional k annealing (Makhzani & Frey 2013): ``k`` falls linearly from ``k_anneal_start``
  to the SAE's ``k`` over ``k_anneal_steps`` steps, then stays;
- NaN/inf rows: skipped and counted (``nan_policy="skip"``, logged) or an error.

Under ``torchrun`` the work is split over the ranks, data-parallel (DDP) or one SAE per rank
(``TrainConfig.distribute``; see :mod:`steerlab.saes.parallel`), with the one-process result.

Checkpoints (every ``checkpoint_every`` steps and at the end) are directories written
atomically (by rank 0 alone under torchrun): ``state.json`` (configs, step, batches consumed, tokens, skipped rows),
``state.safetensors`` (the RNG state as a uint8 tensor), and per SAE ``<name>/cfg.json`` +
``sae.safetensors`` + ``optimizer.safetensors`` (Adam's ``exp_avg``, ``exp_avg_sq`` and
``step`` per parameter, flattened; plus the dead-latent counters). Nothing is pickled.
Resuming restores all of that and skips the consumed batches, so the final weights equal an
uninterrupted run's with the same seed (bit for bit on the same machine and thread count).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from steerlab import __version__
from steerlab.capture.store import SINK, ActivationStore
from steerlab.saes.formats import (
    PARAM_NAMES,
    STATE_JSON,
    adam_state_tensors,
    find_checkpoint,
    load_adam_state_,
    read_checkpoint,
    save_sae,
    write_checkpoint,
)
from steerlab.saes.init import activation_stats, initialize_
from steerlab.saes.parallel import Parallel, batches_of, parallel_for
from steerlab.saes.sae import Sae, SaeConfig, SaeOutput, build_sae, lr_for_width
from steerlab.saes.sources import TensorSource, iter_batches, store_fingerprint
from steerlab.saes.train_config import LrSchedule, TrainConfig

__all__ = [
    "CheckpointMismatchError",
    "LrSchedule",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "steerlab.sae_checkpoint/1"
# TrainConfig fields that do not change the trained weights: free to differ on resume.
# (A checkpoint's world size and distribute mode are checked on their own.)
_NON_SEMANTIC = (
    "checkpoint_dir", "checkpoint_every", "log_every", "device", "distribute", "autocast",
)  # fmt: skip


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for other configs or another data source."""


class TrainProgress(NamedTuple):
    """Passed to the progress callback every ``log_every`` steps and at the end.

    Attributes:
        step: steps done.
        total_steps: steps of the whole run.
        tokens: tokens consumed.
        tokens_per_s: tokens per second since this call of :func:`train` started.
        metrics: SAE name -> ``fvu``, ``l0``, ``auxk_loss``, ``l1_loss`` (averaged since the
            last callback), ``dead_frac`` (now), ``lr``, ``k``.
        skipped_rows: site -> NaN/inf rows skipped so far.
        saes: SAE name -> the SAE being trained (live: evaluate it, do not modify it).
    """

    step: int
    total_steps: int
    tokens: int
    tokens_per_s: float
    metrics: dict[str, dict[str, float]]
    skipped_rows: dict[str, int]
    saes: dict[str, Sae] = {}


@dataclass
class TrainResult:
    """Trained SAEs and the run's bookkeeping."""

    saes: dict[str, Sae]
    """SAE name -> trained SAE (on ``TrainConfig.device``)."""
    steps: int
    tokens: int
    skipped_rows: dict[str, int]
    """Site -> rows skipped for NaN/inf."""
    init_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    """SAE name -> :class:`InitReport` fields (effective rank, subspace dimension, ...)."""
    last_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    init_s: float = 0.0
    """Seconds this call spent on statistics and initialisation (or loading a checkpoint)."""
    sink_rows: dict[str, int] = field(default_factory=dict)
    """Site -> attention-sink rows left out of the training batches (``sinks="drop"``)."""

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Save every SAE to ``out_dir/<name>`` (steerlab layout)."""
        return {n: save_sae(s, Path(out_dir) / n) for n, s in self.saes.items()}


class _Member:
    """One SAE under training: model, optimizer, dead-latent counters, metric sums."""

    def __init__(self, sae: Sae, cfg: TrainConfig) -> None:
        self.sae = sae
        self.name: str = sae.cfg.name  # type: ignore[assignment]
        self.lr = cfg.lr if cfg.lr is not None else lr_for_width(sae.d_sae, cfg.base_lr)
        params = [getattr(sae, n) for n in PARAM_NAMES]
        self.opt = torch.optim.Adam(params, lr=self.lr, betas=cfg.betas, eps=cfg.eps)
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.device)
        self.dead_tokens = cfg.dead_tokens
        self.sums: dict[str, Tensor] = {}
        self.n_sums = 0
        self.k_last = sae.cfg.k
        self.ddp: Any = None  # the DistributedDataParallel wrapper in data-parallel runs

    def add_metrics(self, out: SaeOutput, k: int | None) -> None:
        # summed as tensors: no device sync per step
        for key in ("fvu", "l0", "auxk_loss", "l1_loss"):
            v = getattr(out, key).detach().float()
            self.sums[key] = self.sums[key] + v if key in self.sums else v
        self.n_sums += 1
        self.k_last = k if k is not None else self.sae.cfg.k

    def pop_metrics(self) -> dict[str, float]:
        n = max(self.n_sums, 1)
        d = {key: float(v) / n for key, v in self.sums.items()}
        d["k"] = float(self.k_last)
        d["dead_frac"] = float((self.since_fired >= self.dead_tokens).float().mean())
        d["lr"] = float(self.opt.param_groups[0]["lr"])
        self.sums, self.n_sums = {}, 0
        return d

    def k_at(self, step: int, cfg: TrainConfig) -> int | None:
        c = self.sae.cfg
        if c.architecture != "topk" or cfg.k_anneal_steps == 0:
            return None
        k0 = cfg.k_anneal_start or min(4 * c.k, c.d_sae // 2)
        k0 = min(max(k0, c.k), c.d_sae)
        frac = min(step / cfg.k_anneal_steps, 1.0)
        return int(round(k0 + (c.k - k0) * frac))

    def state_tensors(self) -> dict[str, Tensor]:
        return {"tokens_since_fired": self.since_fired, **adam_state_tensors(self.opt, self.sae)}

    def load_state_tensors(self, t: dict[str, Tensor]) -> None:
        self.since_fired.copy_(t["tokens_since_fired"])
        load_adam_state_(self.opt, self.sae, t)


def train(
    source: ActivationStore | Tensor | Mapping[str, Tensor],
    configs: Sequence[SaeConfig],
    cfg: TrainConfig | None = None,
    *,
    callback: Callable[[TrainProgress], Any] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train the SAEs of ``configs`` on one shuffled stream of batches.

    Args:
        source: an activation store, a ``{site: [n, d]}`` mapping, or one ``[n, d]`` tensor
            (every config must then have the same site, possibly None).
        configs: one :class:`SaeConfig` per SAE; names must be unique.
        cfg: shared training settings.
        callback: called with :class:`TrainProgress` every ``log_every`` steps and at the end.
        resume: continue from ``cfg.checkpoint_dir`` when it holds a checkpoint (its configs
            and data must match, else :class:`CheckpointMismatchError`); False starts afresh
            and overwrites it.
    """
    cfg = cfg or TrainConfig()
    par = parallel_for(cfg.distribute, cfg.device, cfg.autocast)
    cfg = replace(cfg, device=par.device)  # "cuda" -> this rank's GPU under torchrun
    configs = list(configs)
    if not configs:
        raise ValueError("no SAE configs given")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"SAE names must be unique, got {names}")
    if isinstance(source, Tensor):
        sites = {c.site for c in configs}
        if len(sites) != 1:
            raise ValueError(f"one tensor can feed only one site; configs use {sites}")
        source = {sites.pop() or "x": source}
        configs = [
            c if c.site else SaeConfig.from_dict({**c.to_dict(), "site": "x"}) for c in configs
        ]
    src = TensorSource(source) if isinstance(source, Mapping) else source
    fingerprint = src.fingerprint() if isinstance(src, TensorSource) else store_fingerprint(src)
    for c in configs:
        if c.site not in src.sites:
            raise KeyError(f"no site {c.site!r} in the data; it holds {sorted(src.sites)}")
        width = src.sites[c.site]
        if width != c.d_in:
            raise ValueError(f"{c.name}: d_in={c.d_in} but site {c.site!r} has width {width}")
    per_epoch = src.n_tokens // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(
            f"the data has {src.n_tokens} rows, fewer than batch_size={cfg.batch_size}"
        )
    total_steps = (
        per_epoch if cfg.max_tokens is None else math.ceil(cfg.max_tokens / cfg.batch_size)
    )
    header = {
        "format": CHECKPOINT_FORMAT,
        "train_config": _semantic(cfg),
        "sae_configs": [c.to_dict() for c in configs],
        "source": fingerprint,
        "parallel": par.header(),
    }
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = find_checkpoint(cfg.checkpoint_dir) if resume and cfg.checkpoint_dir else None
    t_init = time.perf_counter()
    if ckpt is not None:
        members, state = _load_checkpoint(ckpt, header, cfg, gen)
    else:
        state = _new_state(configs)
        members = _fresh(src, configs, cfg, gen, state["init_reports"])
    init_s = time.perf_counter() - t_init
    members = [m for i, m in enumerate(members) if par.owns(i)]
    par.prepare(members)
    site_list = par.sites(configs)
    schedule = LrSchedule.of(cfg, total_steps)
    t0, tok0 = time.perf_counter(), state["tokens"]
    while state["step"] < total_steps:
        epoch, skip = divmod(state["step"], per_epoch)
        it = batches_of(iter_batches(src, site_list, cfg, epoch, skip), par)
        for batch in it:
            _train_step(members, batch, state, cfg, schedule(state["step"]), par)
            step = state["step"]
            last = step >= total_steps
            if cfg.checkpoint_dir and (
                last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            ):
                state["complete"] = last
                _save_checkpoint(Path(cfg.checkpoint_dir), header, members, state, gen, par,
                                 configs)  # fmt: skip
            log = last or step % cfg.log_every == 0
            if log and (callback is not None or par.collective_metrics):
                rate = (state["tokens"] - tok0) / max(time.perf_counter() - t0, 1e-9)
                progress = _progress(members, state, total_steps, rate, par)
                if callback is not None:
                    callback(progress)
            if last:
                break
    par.merge_counts(state)
    gathered = par.gather(members, configs)
    return TrainResult(
        saes=gathered[0] if gathered is not None else {m.name: m.sae for m in members},
        steps=state["step"],
        tokens=state["tokens"],
        skipped_rows=dict(state["skipped_rows"]),
        init_reports=state["init_reports"],
        last_metrics=state.get("last_metrics", {}),
        init_s=init_s,
        sink_rows=dict(state["sink_rows"]),
    )


def _semantic(cfg: TrainConfig) -> dict[str, Any]:
    d = {k: v for k, v in asdict(cfg).items() if k not in _NON_SEMANTIC}
    return json.loads(json.dumps(d))


def _new_state(configs: Sequence[SaeConfig]) -> dict[str, Any]:
    return {
        "step": 0,
        "tokens": 0,
        "skipped_rows": {c.site: 0 for c in configs},
        "init_reports": {},
        "sink_rows": {c.site: 0 for c in configs},
        "complete": False,
    }


def _fresh(
    src: Any, configs: list[SaeConfig], cfg: TrainConfig, gen: torch.Generator, reports: dict
) -> list[_Member]:
    stats: dict[str, Any] = {}
    members = []
    for c in configs:
        sae = build_sae(c, device=cfg.device)
        site = c.site
        assert site is not None  # train() found every config's site in the data
        if c.init != "random" and site not in stats:
            data = src.data[site] if isinstance(src, TensorSource) else src
            stats[site] = activation_stats(
                data, site, n_tokens=cfg.init_tokens, batch_size=cfg.batch_size,
                seed=cfg.seed, skip_nonfinite=cfg.nan_policy == "skip", exclude_sinks=True,
            )  # fmt: skip
        reports[c.name] = initialize_(sae, stats.get(site), generator=gen)._asdict()
        members.append(_Member(sae, cfg))
    return members


def _train_step(
    members: list[_Member],
    batch: Any,
    state: dict[str, Any],
    cfg: TrainConfig,
    mult: float,
    par: Parallel | None = None,
) -> None:
    par = par or Parallel(cfg.device, cfg.autocast)
    step = state["step"]
    xs: dict[str, Tensor] = {}
    if not isinstance(batch, dict):
        batch = {members[0].sae.cfg.site: batch}
    sink = batch.pop(SINK, None)
    kept, n_rows, sinks, bads = {}, [], [], []
    for site, x in batch.items():
        if sink is not None:
            x = x[~sink]
        bad = ~torch.isfinite(x).all(dim=1)
        kept[site] = x[~bad] if bool(bad.any()) else x
        n_rows.append(kept[site].shape[0])
        sinks.append(0 if sink is None else int(sink.sum()))
        bads.append(int(bad.sum()))
    # one collective for every count in data-parallel runs (each rank holds a share of rows)
    counts = par.sum_counts([*n_rows, *sinks, *bads])
    n_sites = len(kept)
    rows = dict(zip(kept, counts[:n_sites]))
    for i, site in enumerate(kept):
        n_sink, n_bad = counts[n_sites + i], counts[2 * n_sites + i]
        if sink is not None:
            state["sink_rows"][site] += n_sink
        if n_bad:
            if cfg.nan_policy == "error":
                raise ValueError(f"batch {step}: {n_bad} rows of site {site!r} hold NaN or inf")
            state["skipped_rows"][site] += n_bad
            logger.warning("batch %d: skipped %d NaN/inf rows of %r", step, n_bad, site)
        xs[site] = kept[site].to(cfg.device)
    norms = {site: par.total_variance(x) for site, x in xs.items()}
    for m in members:
        site = m.sae.cfg.site
        x = xs[site]  # type: ignore[index]
        if rows[site] < 2:
            logger.warning("batch %d: fewer than 2 finite rows for %s; no step", step, m.name)
            continue
        for group in m.opt.param_groups:
            group["lr"] = m.lr * mult
        k = m.k_at(step, cfg)
        use_aux = cfg.auxk_alpha > 0 and m.sae.unit_norm_decoder
        dead = m.since_fired >= cfg.dead_tokens
        tv, n_all = norms[site]  # type: ignore[index]
        extra = {} if tv is None else {"total_variance": tv, "n_rows": n_all}
        out = par.forward(m, x, dead_mask=dead if use_aux else None, k=k, **extra)
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + m.sae.cfg.l1_coefficient * out.l1_loss
        (loss * par.loss_scale if par.loss_scale != 1 else loss).backward()
        if m.sae.unit_norm_decoder:
            m.sae.remove_gradient_parallel_to_decoder_directions_()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        if m.sae.unit_norm_decoder:
            m.sae.set_decoder_norm_to_unit_norm_()
        with torch.no_grad():
            fired = par.fired(m.sae.latent_counts(out)) > 0
            m.since_fired += rows[site]
            m.since_fired[fired] = 0
        if n_all is not None:  # this rank's share of the batch's mean L0
            out = out._replace(l0=out.l0 * (x.shape[0] / n_all))
        m.add_metrics(out, k)
    state["step"] = step + 1
    state["tokens"] += cfg.batch_size


def _progress(
    members: list[_Member],
    state: dict[str, Any],
    total: int,
    rate: float,
    par: Parallel | None = None,
) -> TrainProgress:
    if par is not None:
        for m in members:
            m.sums = par.reduce_metrics(m.sums)
    metrics = {m.name: m.pop_metrics() for m in members}
    state["last_metrics"] = metrics
    return TrainProgress(
        state["step"],
        total,
        state["tokens"],
        rate,
        metrics,
        dict(state["skipped_rows"]),
        {m.name: m.sae for m in members},
    )


# --- checkpoints -------------------------------------------------------------------------------


def _save_checkpoint(
    root: Path,
    header: dict,
    members: list[_Member],
    state: dict,
    gen: torch.Generator,
    par: Parallel | None = None,
    configs: Sequence[SaeConfig] = (),
) -> None:
    par = par or Parallel("cpu", "off")
    counts = {k: dict(state[k]) for k in ("skipped_rows", "sink_rows")}
    par.merge_counts(counts)  # every rank joins the collectives; rank 0 alone writes
    gathered = par.gather(members, configs)
    if gathered is None:
        return
    body = {
        **header,
        **{k: v for k, v in state.items() if k != "last_metrics"},
        **counts,
        "batches_consumed": state["step"],
        "steerlab_version": __version__,
    }
    if par.rank == 0:
        path = write_checkpoint(root, body, *gathered, {"rng": gen.get_state()})
        logger.info("checkpoint at step %d written to %s", state["step"], path)


def _load_checkpoint(
    path: Path, header: dict, cfg: TrainConfig, gen: torch.Generator
) -> tuple[list[_Member], dict]:
    body = json.loads((path / STATE_JSON).read_text())
    if body.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{path}: format {body.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    one_process = {"world_size": 1, "distribute": "none"}  # checkpoints from before torchrun
    diffs = [
        f"  {key}:\n    checkpoint {body.get(key, one_process)}\n    requested  {header[key]}"
        for key in ("train_config", "sae_configs", "source", "parallel")
        if body.get(key, one_process if key == "parallel" else None) != header[key]
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"{path} was written for another run:\n"
            + "\n".join(diffs)
            + "\nUse another checkpoint_dir, or pass resume=False to start afresh."
        )
    names = [c["name"] for c in header["sae_configs"]]
    body, saes, per_sae, tensors = read_checkpoint(path, names, device=cfg.device)
    gen.set_state(tensors["rng"])
    members = []
    for n in names:
        m = _Member(saes[n], cfg)
        m.load_state_tensors(per_sae[n])
        members.append(m)
    state = {k: body[k] for k in ("step", "tokens", "skipped_rows", "init_reports", "complete")}
    state["sink_rows"] = body.get("sink_rows", {site: 0 for site in state["skipped_rows"]})
    logger.info("resuming from %s at step %d (%d tokens)", path, state["step"], state["tokens"])
    return members, state
