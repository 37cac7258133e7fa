"""Per-token latency of steered greedy generation, as paired ratios to the unsteered run.

Batch 1, a chat prompt, exactly ``--new-tokens`` greedy tokens with the KV cache, on the
embedded model. Conditions, run in a rotating order within every repeat so that drifts in the
machine's load hit all of them alike:

- unsteered (the reference);
- steerlab, one additive vector at ``resid_post.<layer>`` (``AddVector``, every token);
- steerlab, additive vectors at 5 layers;
- steerlab, a rank-4 LoReFT at ``resid_post.<layer>``, as ``steer`` applies it to a plain
  ``model.generate`` (its orthogonal parametrization recomputes R at every step) and with R
  cached for the call (``parametrize.cached()``, as ``steerlab.steering.generate`` does);
- the ``steering-vectors`` library (PyPI ``steering-vectors``) adding the same vector at the same
  layer (``SteeringVector.apply``), a benchmark-only extra: ``pip install --no-deps
  steering-vectors`` (its metadata pins transformers < 5; the hook code works with 5);
- a bare PyTorch forward hook adding the same vector (the floor for any hook library).

Each repeat times every condition once; the ratio of a condition is the median over repeats of
``t_condition / t_unsteered`` within the same repeat. Latency is the median wall time divided
by the number of new tokens.

    python benchmarks/steering.py [--layer 12] [--new-tokens 64] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch.nn.utils import parametrize

from steerlab.interventions import AddVector, LoReFT, steer
from steerlab.models import load_model
from steerlab.steering.generate import left_pad, render


@contextmanager
def _bare_hook(module: torch.nn.Module, v: torch.Tensor):
    def hook(_m, _a, out):
        if isinstance(out, tuple):
            return (out[0] + v, *out[1:])
        return out + v

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _cached(ctx: AbstractContextManager):
    """``parametrize.cached()``: LoReFT's orthogonal R is computed once per generate call, not
    at every step (what :func:`steerlab.steering.generate.generate` does)."""
    with ctx, parametrize.cached():
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--layers", default="4,8,12,16,20", help="the 5-layer condition")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--alpha", type=float, default=4.0, help="strength of the added vectors")
    ap.add_argument("--prompt", default="Tell me about your weekend.")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h = load_model(args.model, device="cpu")
    d, L = h.d_model, args.layer
    v = torch.randn(d)
    v_eff = args.alpha * v / v.norm()  # what AddVector(v, alpha) adds
    site = f"resid_post.{L}"
    ids, am = left_pad([torch.tensor(h.tokenizer(render(h, [args.prompt])[0],
                                                  add_special_tokens=False)["input_ids"])],
                       h.tokenizer.pad_token_id)  # fmt: skip
    lo = LoReFT(d, 4, site)
    multi = [AddVector(v, args.alpha, f"resid_post.{i}") for i in map(int, args.layers.split(","))]
    if len(multi) != 5:
        print(f"note: --layers has {len(multi)} layers, not 5")

    conds: dict[str, Callable[[], AbstractContextManager]] = {
        "unsteered": nullcontext,
        f"steerlab AddVector @ {site}": lambda: steer(h, AddVector(v, args.alpha, site)),
        f"steerlab AddVector @ {len(multi)} layers ({args.layers})": lambda: steer(h, multi),
        f"steerlab LoReFT rank 4 @ {site}": lambda: steer(h, lo),
        f"steerlab LoReFT rank 4 @ {site}, R cached": lambda: _cached(steer(h, lo)),
        f"bare torch hook @ block {L}": lambda: _bare_hook(h.layers[L], v_eff),
    }
    try:
        from steering_vectors import SteeringVector

        sv = SteeringVector({L: v_eff}, "decoder_block")
        conds[f"steering-vectors @ block {L}"] = lambda: sv.apply(h.model)
    except ImportError:
        print("steering-vectors is not installed (pip install --no-deps steering-vectors); skipped")

    def run(ctx: Callable[[], AbstractContextManager]) -> tuple[float, torch.Tensor]:
        with torch.inference_mode(), ctx():
            t0 = time.perf_counter()
            out = h.model.generate(input_ids=ids, attention_mask=am, do_sample=False,
                                   max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens,
                                   pad_token_id=h.tokenizer.pad_token_id)  # fmt: skip
            return time.perf_counter() - t0, out[0, ids.shape[1] :]

    names = list(conds)
    outs = {}
    for _ in range(args.warmup):
        for k in names:
            outs[k] = run(conds[k])[1]
    same = [k for k in names if k.startswith(("steering-vectors", "bare"))]
    ref = f"steerlab AddVector @ {site}"
    for k in same:  # the same vector through three hook paths: the same tokens
        status = "same tokens" if torch.equal(outs[k], outs[ref]) else "DIFFERENT tokens"
        print(f"check: {k} vs {ref}: {status}")

    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate the order
        for k in order:
            times[k].append(run(conds[k])[0])
    base = times["unsteered"]
    n = args.new_tokens
    print(f"\n{h.model_id}, batch 1, {n} greedy tokens, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'condition':<52} {'ms/token':>9} {'ratio':>7} {'IQR of ratio':>15}")
    for k in names:
        ratios = sorted(t / b for t, b in zip(times[k], base))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        ms = 1000 * statistics.median(times[k]) / n
        print(f"{k:<52} {ms:9.2f} {statistics.median(ratios):7.3f}x "
              f"{q[0]:7.3f}-{q[2]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
