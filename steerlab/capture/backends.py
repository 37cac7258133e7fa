"""Three ways to read activations at sites: plain PyTorch hooks, TransformerLens, nnsight.

Each backend takes a padded batch and the flat indices of the selected tokens and returns,
per site, the selected rows ``[n_rows, d]`` in row-major order of the selection mask. All three
give the same numbers (tested against each other and against ``output_hidden_states``).

The ``hf`` backend is the fast path: a forward hook per site copies only the selected rows, and
the hook of the last site (in execution order) raises :class:`_StopForward`, so no layer after
it runs. That is what makes capture at layer 6 of a 30-layer model ~5x cheaper than a full
forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from steerlab.models import ModelHandle
from steerlab.sites import Site, check_site, hf_location, nnsight_module

BACKENDS = ("hf", "transformer_lens", "nnsight")


class _StopForward(Exception):
    """Raised by the last capture hook to end the forward pass early."""


def _first(x: Any) -> Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _left_padded(attention_mask: Tensor) -> bool:
    return bool((attention_mask[:, 0] == 0).any())


def _inputs(input_ids: Tensor, attention_mask: Tensor) -> dict[str, Any]:
    """Forward inputs; a left-padded batch also gets position ids counted from each row's
    first real token (a plain forward would count them from column 0, which moves absolute
    position embeddings such as GPT-2's)."""
    kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _left_padded(attention_mask):
        kw["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
    return kw


def _forward_kwargs(handle: ModelHandle, input_ids: Tensor, attention_mask: Tensor) -> dict:
    kw = _inputs(input_ids, attention_mask)
    if handle.is_causal:
        kw["use_cache"] = False
    return kw


def run_hf(
    handle: ModelHandle,
    input_ids: Tensor,
    attention_mask: Tensor,
    sites: Sequence[Site],
    flat_idx: Tensor,
) -> dict[str, Tensor]:
    """Capture with forward hooks on the HF modules; stop after the last site."""
    out: dict[str, Tensor] = {}
    last = max(sites)
    handles = []

    def make_hook(site: Site, io: str):
        def grab(t: Tensor) -> None:
            # under a device map each layer's activations live on that layer's device
            out[site.name] = t.reshape(-1, t.shape[-1]).index_select(0, flat_idx.to(t.device))
            if site == last:
                raise _StopForward

        if io == "input":
            return lambda _mod, args, kwargs: grab(args[0] if args else kwargs["hidden_states"])
        return lambda _mod, _args, output: grab(_first(output))

    try:
        for site in sites:
            loc = hf_location(handle, site)
            if loc.io == "input":
                h = loc.module.register_forward_pre_hook(make_hook(site, "input"), with_kwargs=True)
            else:
                h = loc.module.register_forward_hook(make_hook(site, "output"))
            handles.append(h)
        with contextlib.suppress(_StopForward):
            handle.model(**_forward_kwargs(handle, input_ids, attention_mask))
    finally:
        for h in handles:
            h.remove()
    return out


def run_transformer_lens(
    handle: ModelHandle,
    input_ids: Tensor,
    attention_mask: Tensor,
    sites: Sequence[Site],
    flat_idx: Tensor,
) -> dict[str, Tensor]:
    """Capture through TransformerLens's ``TransformerBridge.run_with_cache``."""
    for s in sites:  # a site the architecture lacks is a SiteError, not a missing cache key
        check_site(handle, s)
    if _left_padded(attention_mask):
        raise ValueError("the transformer_lens backend needs right padding (padding_side='right')")
    bridge = handle.transformer_lens()
    names = {s.tl_name(): s for s in sites}
    stop = max(sites).layer + 1
    _, cache = bridge.run_with_cache(
        input_ids,
        names_filter=list(names),
        stop_at_layer=stop if stop < handle.n_layers else None,
        attention_mask=attention_mask,
    )
    out = {}
    for name, site in names.items():
        t = cache[name]
        out[site.name] = t.reshape(-1, t.shape[-1]).index_select(0, flat_idx.to(t.device))
    return out


def run_nnsight(
    handle: ModelHandle,
    input_ids: Tensor,
    attention_mask: Tensor,
    sites: Sequence[Site],
    flat_idx: Tensor,
) -> dict[str, Tensor]:
    """Capture through an nnsight trace (envoys read in execution order, then stop).

    Nothing here reads the local weights: with ``handle.remote`` (:func:`steerlab.models.
    from_nnsight`) the trace runs on NDIF and only the saved activations come back. The module
    envoys are looked up before the trace, so the body that nnsight serialises for the server
    names nnsight objects only (not the handle, its tokenizer, or steerlab code, which NDIF
    does not have).
    """
    lm = handle.nnsight()
    points = [(site.name, *nnsight_module(lm, handle, site)) for site in sorted(sites)]
    saved = {}
    remote = {"remote": handle.remote} if handle.remote else {}
    with lm.trace(_inputs(input_ids, attention_mask), **remote) as tracer:
        for name, module, io in points:  # in execution order
            saved[name] = getattr(module, io).save()
        tracer.stop()  # nothing after the last site runs
    out = {}
    for name, value in saved.items():
        t: Any = _first(value.value if hasattr(value, "value") else value)
        if isinstance(t, dict):  # an input envoy may give (args, kwargs)
            t = t["hidden_states"]
        out[name] = t.reshape(-1, t.shape[-1]).index_select(0, flat_idx.to(t.device))
    return out


RUNNERS = {"hf": run_hf, "transformer_lens": run_transformer_lens, "nnsight": run_nnsight}
