"""Apply interventions during a forward pass: ``with steer(handle, interventions): ...``.

    >>> iv = AddVector(v, alpha=4.0, site="resid_post.12", positions="generation")
    >>> with steer(handle, iv):
    ...     out = handle.model.generate(**enc, max_new_tokens=32)

Backends: ``"hf"`` (PyTorch hooks on ``handle.model``; works for forwards and ``generate``),
``"transformer_lens"`` (TL hook points on the bridge from ``handle.transformer_lens()``), and
:func:`apply_nnsight`, called inside an ``lm.trace()`` block. Every hook is removed in
``finally``: an exception inside the block leaves the model exactly as it was. (TransformerLens
4.3's own KV-cached ``bridge.generate`` is broken on transformers 5.24 even unsteered: it
repeats one token. Pass ``use_past_kv_cache=False`` to it; steering works either way.)

**Position tracking** (:class:`PositionTracker`, one per ``steer`` context). A hook on the base
model sees every call's ``input_ids``, full attention mask (past + new tokens) and KV cache, and
turns them into a :class:`~steerlab.positions.TokenView`: each token's rank among its
example's content tokens, which tokens were added, and the prompt length ``L_b``. The rule for
where a prompt starts:

1. Inside ``generate()`` (the context wraps ``model.generate`` while it is open), the first
   forward call of each ``generate`` is the prompt; all later calls continue it, with or
   without the KV cache.
2. Outside ``generate``, a call with no cached tokens starts a new prompt made of all its real
   tokens; a call on top of a KV cache continues the current prompt.
3. ``Steering.new_prompt(lengths)`` makes the next prompt start have ``lengths[b]`` real prompt
   tokens (an added BOS included); the rest of that call counts as generation (to score a fixed
   continuation in one forward, or to drive a manual uncached decoding loop: call it before
   every step). Without it, a prompt start inside a ``batch_scope`` whose batch has prompt
   lengths (an encoded prompt + completion batch) takes those.

Tokens are counted by rank among the content tokens, so left or right padding, batching and
the cache change nothing. Padding and the tokens the tokenizer or steerlab added (a BOS
prepended for ``handle.add_bos``, BERT's [CLS]/[SEP]; :mod:`steerlab.tokens`) are never edited:
``"all"`` means every token of the text, exactly the tokens ``capture(..., positions="all")``
reads. A forward inside :func:`steerlab.tokens.batch_scope` (as ``capture()`` and
:mod:`steerlab.interventions.run` run theirs) also gives the tracker the batch's prompt
lengths, each row's index in the caller's texts and the tokens' character offsets, so that
character-span rules resolve per batch.

**Per-example steering.** ``steer(handle, [[iv_a], [iv_b, iv_c], []], per_example=True)`` gives
example ``b`` of the batch its own list (applied in order); the batch size of every call must
match the list. Different strengths per example are different ``AddVector`` objects.

**Order.** Interventions passed as a list apply one after another at a site (each sees the
previous output); :class:`~steerlab.interventions.kinds.Compose` sums them instead. Sites
apply in execution order. Steering hooks are registered with ``prepend=True``, so every other
hook on the model (steerlab capture, ``output_hidden_states``, a user's) sees the steered
activations, whether it was registered before or after the context opened; in nested ``steer``
contexts the innermost applies first at a shared site.

**resid_mid.** Writing ``resid_mid`` of a pre-LayerNorm model (Llama, GPT-2) edits the residual
stream itself: the hook adds the change to the attention output, because the module input that
carries ``resid_mid`` (``ln_2``'s input) only feeds the MLP.

**Devices and dtypes.** Each intervention is moved (``nn.Module.to``, in place) to the device
its site computes on, which for a model dispatched with a device map (accelerate; layers on
several GPUs, or offloaded to CPU or disk) differs from layer to layer. At every call its
tensors meet the hidden state where it is: any that sit on another device, or in a coarser
dtype than the hidden state (a bfloat16 vector on a float32 model), are used as copies on the
hidden state's device and in its dtype for that call (``torch.func.functional_call``, so
gradients still reach the originals); an intervention finer than the hidden state (float32 on
a bfloat16 model) computes in its own dtype. The result always has the hidden state's dtype
and device.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

from steerlab.interventions.kinds import Intervention
from steerlab.models import ModelHandle, module_device
from steerlab.positions import TokenView
from steerlab.sites import (
    Site,
    SiteError,
    _get,
    hf_location,
    parse_site,
    resid_mid_is_written_via_attn_out,
)
from steerlab.tokens import BatchInfo, added_special, current_batch

logger = logging.getLogger(__name__)

Backend = Literal["hf", "transformer_lens"]


class PositionTracker:
    """Knows, at every forward call, each token's rank and whether it is prompt or generation.

    See the module docstring for the rule. ``view`` is the current call's
    :class:`TokenView`; ``prompt_len`` the real prompt tokens (added tokens included) of each
    example of the sequence; ``lead`` whether each example starts with an added token (a BOS
    steerlab prepended), which a cached call cannot see any more.
    """

    def __init__(self, handle: ModelHandle | None = None) -> None:
        self.handle = handle
        self.prompt_len: Tensor | None = None
        self.lead: Tensor | None = None
        self.batch: BatchInfo | None = None
        self.view: TokenView | None = None
        self.resid: dict[int, Tensor] = {}  # resid_pre of this call, for resid_mid edits
        self._pending: Tensor | int | None = None
        self._in_generate = 0
        self._generate_started = False

    def new_prompt(self, lengths: int | Sequence[int] | Tensor | None = None) -> None:
        """The next call starts a prompt; with ``lengths``, only that many real tokens of
        each example (added tokens included) are prompt, the rest generation."""
        if lengths is not None and not isinstance(lengths, (int, Tensor)):
            lengths = torch.as_tensor(list(lengths))
        self._pending = lengths

    def begin_generate(self) -> None:
        self._in_generate += 1
        self._generate_started = False

    def end_generate(self) -> None:
        self._in_generate -= 1

    def _special(self, ids: Tensor | None, am: Tensor, past: int) -> Tensor | None:
        """Added tokens over the full (past + new) mask: found by id in an uncached call,
        remembered (``lead``) for the cached past."""
        if self.handle is None:
            return None
        if past == 0:
            return added_special(self.handle, ids, am)
        if self.lead is None or len(self.lead) != am.shape[0]:
            return None
        real = am.bool()
        return real & (real.long().cumsum(1) == 1) & self.lead.to(am.device)[:, None]

    def on_call(
        self,
        input_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        attention_mask: Tensor | None,
        cache: Any,
    ) -> TokenView:
        """Update the state from one forward call's inputs and return its view."""
        x = input_ids if input_ids is not None else inputs_embeds
        if x is None:
            raise ValueError("steer: the forward call passed neither input_ids nor inputs_embeds")
        n_batch, n_new = x.shape[0], x.shape[1]
        dev = x.device
        cached = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
        am = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
        if attention_mask is not None and am is None:
            logger.warning("steer: a %d-D attention mask is not parsed; all tokens count as real",
                           attention_mask.ndim)  # fmt: skip
        if am is not None and am.shape[1] > n_new:
            past = am.shape[1] - n_new  # the mask covers past + new tokens (HF and TL generate)
        else:
            past = cached
            new = am if am is not None else torch.ones(n_batch, n_new, dtype=torch.long, device=dev)
            am = torch.cat([torch.ones(n_batch, past, dtype=new.dtype, device=dev), new], 1)
        am = am.to(dev)
        ids = input_ids if input_ids is not None and input_ids.ndim == 2 else None
        special = self._special(ids, am, past)
        starts = (not self._generate_started) if self._in_generate else past == 0
        if self._in_generate:
            self._generate_started = True
        if starts:
            batch = current_batch()
            self.batch = batch if batch is not None and batch.n == n_batch else None
            if self._pending is not None:
                plen = torch.as_tensor(self._pending, device=dev).expand(n_batch).long()
            elif self.batch is not None and self.batch.prompt_len is not None:
                plen = self.batch.prompt_len.to(dev)
            else:
                plen = am.bool().sum(1)
            self._pending = None
            self.prompt_len = plen
            first = am.bool() & (am.long().cumsum(1) == 1)
            self.lead = None if special is None else (special & first).any(1)
        elif self.prompt_len is None or len(self.prompt_len) != n_batch:
            logger.warning("steer: a cached call without a known prompt; the cached tokens count "
                           "as the prompt")  # fmt: skip
            self.prompt_len = am[:, :past].bool().sum(1)
            self.batch = None
        self.resid = {}
        b = self.batch
        self.view = TokenView.from_mask(
            am, n_new, self.prompt_len, ids, special=special,
            examples=None if b is None else b.examples, offsets=None if b is None else b.offsets,
        )  # fmt: skip
        return self.view


@dataclass
class _Point:
    """One place a backend touches: the tensor of site ``loc`` and what to do with it."""

    loc: Site
    actions: list[tuple[str, Site]] = field(default_factory=list)  # ("edit"|"record"|"mid", site)


def _plan(handle: ModelHandle, sites: list[Site]) -> list[_Point]:
    """Where to hook, in execution order. ``resid_mid`` of pre-LN models becomes "record the
    block input" plus "edit attn_out so that resid_pre + attn_out moves as resid_mid should"."""
    points: dict[Site, _Point] = {}

    def at(kind: str, layer: int) -> _Point:
        loc = parse_site(f"{kind}.{layer}")
        return points.setdefault(loc, _Point(loc))

    for s in sorted(sites):
        if s.kind == "resid_mid" and resid_mid_is_written_via_attn_out(handle):
            at("resid_pre", s.layer).actions.append(("record", s))
            at("attn_out", s.layer).actions.append(("mid", s))
        else:
            at(s.kind, s.layer).actions.append(("edit", s))
    for p in points.values():  # edits first, then the record / the resid_mid edit
        p.actions.sort(key=lambda a: a[0] != "edit")
    return [points[k] for k in sorted(points)]


def _groups(
    interventions: Any, per_example: bool
) -> list[tuple[list[Intervention], list[int] | None]]:
    """Normalise the ``interventions`` argument to ``[(list, example rows or None)]``."""
    if isinstance(interventions, Intervention):
        return [([interventions], None)]
    items = list(interventions)
    if not per_example:
        if not all(isinstance(i, Intervention) for i in items):
            raise TypeError("pass Intervention objects (or per_example=True with one list each)")
        return [(items, None)]
    groups: dict[tuple[int, ...], tuple[list[Intervention], list[int]]] = {}
    for b, ex in enumerate(items):
        ex = [] if ex is None else [ex] if isinstance(ex, Intervention) else list(ex)
        if not all(isinstance(i, Intervention) for i in ex):
            raise TypeError(f"example {b}: expected Intervention objects")
        groups.setdefault(tuple(map(id, ex)), (ex, []))[1].append(b)
    return [(ivs, rows) for ivs, rows in groups.values() if ivs]


class Steering:
    """The context manager returned by :func:`steer` (see the module docstring)."""

    def __init__(
        self,
        handle: ModelHandle,
        interventions: Intervention | Sequence[Any],
        backend: Backend = "hf",
        per_example: bool = False,
    ) -> None:
        if backend not in ("hf", "transformer_lens"):
            raise ValueError(
                f"unknown backend {backend!r}; use 'hf' or 'transformer_lens' "
                "(for nnsight call apply_nnsight inside lm.trace())"
            )
        self.handle, self.backend = handle, backend
        self.groups = _groups(interventions, per_example)
        self.n_examples = len(list(interventions)) if per_example else None  # type: ignore[arg-type]
        unique = {id(iv): iv for ivs, _ in self.groups for iv in ivs}
        for iv in unique.values():
            iv.check(handle)  # every check runs before any hook exists
        for iv in unique.values():
            for leaf in iv.leaves():
                dev = _site_device(handle, parse_site(leaf.site, handle.n_layers))
                if any(t.device != dev for t in (*leaf.parameters(), *leaf.buffers())):
                    logger.info("moving %s to %s (in place)", leaf.KIND, dev)
                    leaf.to(dev)
        self.sites = sorted(
            {parse_site(s, handle.n_layers) for iv in unique.values() for s in iv.sites()}
        )
        self.points = _plan(handle, self.sites)
        self.tracker = PositionTracker(handle)
        self._stack: ExitStack | None = None
        self._views: tuple[TokenView | None, dict[torch.device, TokenView]] = (None, {})

    def new_prompt(self, lengths: int | Sequence[int] | Tensor | None = None) -> None:
        """See :meth:`PositionTracker.new_prompt`."""
        self.tracker.new_prompt(lengths)

    # --- shared by all backends -------------------------------------------------------------

    def apply(self, site: Site, h: Tensor) -> Tensor:
        """Run every intervention at ``site`` on ``h`` for the current call."""
        view = self.tracker.view
        if view is None or view.real.shape != h.shape[:2]:
            view = TokenView.from_mask(
                torch.ones(h.shape[:2], dtype=torch.long, device=h.device), h.shape[1]
            )
        view = self._view_on(view, h.device)
        for ivs, rows in self.groups:
            mask = None
            if rows is not None:
                if h.shape[0] != self.n_examples:
                    raise ValueError(f"per-example steering for {self.n_examples} examples, but the "
                                     f"batch has {h.shape[0]} rows")  # fmt: skip
                mask = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
                mask[rows] = True
            for iv in ivs:
                h = _apply_aligned(iv, site.name, h, view, mask)
        return h

    def _view_on(self, view: TokenView, device: torch.device) -> TokenView:
        """``view`` with its tensors on ``device`` (the device of a layer of a dispatched
        model), made once per call and device."""
        if view.real.device == device:
            return view
        if self._views[0] is not view:
            self._views = (view, {})
        cache = self._views[1]
        if device not in cache:
            cache[device] = dataclasses.replace(view, **{
                f.name: getattr(view, f.name).to(device) for f in dataclasses.fields(view)
                if isinstance(getattr(view, f.name), Tensor)
            })  # fmt: skip
        return cache[device]

    def run_point(self, point: _Point, h: Tensor) -> Tensor:
        for action, site in point.actions:
            if action == "edit":
                h = self.apply(site, h)
            elif action == "record":
                self.tracker.resid[site.layer] = h
            else:  # "mid": h is attn_out; resid_mid = resid_pre + attn_out
                mid = self.tracker.resid.pop(site.layer).to(h.device) + h
                h = h + (self.apply(site, mid) - mid)
        return h

    def _on_call(self, _module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.tracker.on_call(ids, kwargs.get("inputs_embeds"), kwargs.get("attention_mask"), cache)

    def _patch_generate(self, obj: Any, stack: ExitStack) -> None:
        """Wrap ``obj.generate`` so each call starts a prompt (rule 1); undone on exit."""
        if not hasattr(obj, "generate"):
            return
        original, had, old = obj.generate, "generate" in obj.__dict__, obj.__dict__.get("generate")
        tracker = self.tracker

        def generate(*args: Any, **kwargs: Any) -> Any:
            tracker.begin_generate()
            try:
                return original(*args, **kwargs)
            finally:
                tracker.end_generate()

        obj.__dict__["generate"] = generate  # bypasses nn.Module / bridge __setattr__

        def restore() -> None:
            if had:
                obj.__dict__["generate"] = old
            else:
                obj.__dict__.pop("generate", None)

        stack.callback(restore)

    # --- hf -------------------------------------------------------------------------------

    def _enter_hf(self, stack: ExitStack, model: Any) -> None:
        stack.enter_context(
            _removing(model.base_model.register_forward_pre_hook(self._on_call, with_kwargs=True))
        )
        for point in self.points:
            loc = hf_location(self.handle, point.loc)
            if loc.io == "output":
                hook = _output_hook(self, point)
                stack.enter_context(_removing(loc.module.register_forward_hook(hook, prepend=True)))
            else:
                hook = _input_hook(self, point)
                stack.enter_context(
                    _removing(
                        loc.module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
                    )
                )
        self._patch_generate(model, stack)

    # --- transformer_lens -------------------------------------------------------------------

    def _enter_tl(self, stack: ExitStack) -> None:
        bridge = self.handle.transformer_lens()
        base = bridge.original_model.base_model
        stack.enter_context(
            _removing(base.register_forward_pre_hook(self._on_call, with_kwargs=True))
        )
        for point in self.points:
            name = point.loc.tl_name()
            hp = bridge.hook_dict.get(name)
            if hp is None:
                raise SiteError(f"the TransformerLens bridge has no hook point {name}")
            lens = hp.add_hook(lambda t, _p=point, **_: self.run_point(_p, t), prepend=True)
            stack.callback(_remove_lens, hp, lens)
        self._patch_generate(bridge, stack)

    def __enter__(self) -> Steering:
        if self._stack is not None:
            raise RuntimeError("this steer() context is already open")
        stack = ExitStack()
        try:
            if self.backend == "hf":
                self._enter_hf(stack, self.handle.model)
            else:
                self._enter_tl(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        logger.debug("steering %d sites with %s hooks", len(self.sites), self.backend)
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self.tracker.view, self.tracker.resid = None, {}


def steer(
    handle: ModelHandle,
    interventions: Intervention | Sequence[Any],
    backend: Backend = "hf",
    *,
    per_example: bool = False,
) -> Steering:
    """Context manager applying ``interventions`` to every forward pass inside it.

    Each intervention edits the tokens its position rule (:mod:`steerlab.positions`) selects:
    the same rules, with the same meaning, as :func:`steerlab.capture.capture` reads. ``"all"``
    is every token of the text (never padding, never a BOS steerlab added or BERT's
    [CLS]/[SEP]); ``"prompt"``/``"generation"`` split at the prompt's end (see the module
    docstring for where a prompt starts); character :func:`~steerlab.positions.spans` resolve
    against the batch declared by :func:`steerlab.tokens.batch_scope`.

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        interventions: one intervention, a list (applied in order at each site), or with
            ``per_example=True`` one list (or intervention, or None) per batch example.
        backend: ``"hf"`` hooks ``handle.model``; ``"transformer_lens"`` hooks the bridge
            ``handle.transformer_lens()`` (run that object inside the block).
        per_example: see above; every call's batch must then have ``len(interventions)`` rows.

    Raises:
        SiteError: a site the model lacks. ValueError: a width mismatch. Nothing is hooked then.
    """
    return Steering(handle, interventions, backend, per_example)


def apply_nnsight(
    lm: Any,
    handle: ModelHandle,
    interventions: Intervention | Sequence[Any],
    *,
    per_example: bool = False,
) -> Steering:
    """Apply interventions inside an nnsight ``lm.trace(...)`` block by editing envoys.

    ``lm`` is ``handle.nnsight()`` (a ``LanguageModel`` over ``handle.model``). Call it first in
    the block, before reading any envoy; one forward call per trace (``lm.trace``, not
    ``lm.generate``). Positions follow the same rules as :func:`steer`.
    """
    s = Steering(handle, interventions, "hf", per_example)
    args, kwargs = _get(lm, handle.model.base_model_prefix).inputs
    s._on_call(None, args, kwargs)
    for point in s.points:
        loc = hf_location(handle, point.loc)
        env = _get(lm, loc.path)
        value = getattr(env, loc.io)
        new = _replace_first(value, s.run_point(point, _first(value)))
        setattr(env, loc.io, new)
    return s


# --- helpers ----------------------------------------------------------------------------------


def _site_device(handle: ModelHandle, site: Site) -> torch.device:
    """The device the module of ``site`` computes on (per layer under a device map)."""
    try:
        module = hf_location(handle, site).module
    except SiteError:
        return handle.device
    return module_device(module, default=handle.device)


class _ApplyAt(nn.Module):
    """Calls ``iv.apply_at``; wraps it so :func:`torch.func.functional_call` can swap its
    tensors for copies on another device or in another dtype."""

    def __init__(self, iv: Intervention) -> None:
        super().__init__()
        self.iv = iv

    def forward(self, site: str, h: Tensor, view: TokenView, rows: Tensor | None) -> Tensor:
        return self.iv.apply_at(site, h, view, rows)


def _aligned_tensors(iv: Intervention, site: str, h: Tensor) -> dict[str, Tensor]:
    """Copies of the tensors of ``iv``'s leaves at ``site`` that are on another device than
    ``h`` or in a coarser floating dtype, moved to ``h``'s device and the finer dtype."""
    here = [leaf for leaf in iv.leaves() if site in leaf.sites()]
    prefixes = [name for name, m in iv.named_modules() if any(m is leaf for leaf in here)]
    out = {}
    for name, t in (*iv.named_parameters(), *iv.named_buffers()):
        if not any(p == "" or name.startswith(p + ".") for p in prefixes):
            continue
        dtype = torch.promote_types(t.dtype, h.dtype) if t.is_floating_point() else t.dtype
        if t.device != h.device or dtype != t.dtype:
            out[f"iv.{name}"] = t.to(device=h.device, dtype=dtype)
    return out


def _apply_aligned(
    iv: Intervention, site: str, h: Tensor, view: TokenView, rows: Tensor | None
) -> Tensor:
    """``iv.apply_at`` with its tensors where ``h`` is (see "Devices and dtypes" above); the
    result has ``h``'s dtype."""
    moved = _aligned_tensors(iv, site, h)
    if not moved:
        out = iv.apply_at(site, h, view, rows)
    else:
        out = functional_call(_ApplyAt(iv), moved, (site, h, view, rows), strict=False)
    return out if out.dtype == h.dtype else out.to(h.dtype)


class _removing:
    """Context manager that removes a torch hook handle on exit."""

    def __init__(self, handle: RemovableHandle) -> None:
        self.handle = handle

    def __enter__(self) -> RemovableHandle:
        return self.handle

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


def _remove_lens(hp: Any, lens: Any) -> None:
    lens.hook.remove()
    if lens in hp.fwd_hooks:
        hp.fwd_hooks.remove(lens)


def _first(x: Any) -> Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(x: Any, new: Tensor) -> Any:
    if isinstance(x, tuple):
        return (new, *x[1:])
    if isinstance(x, list):
        return [new, *x[1:]]
    return new


def _output_hook(s: Steering, point: _Point) -> Callable:
    def hook(_module: Any, _args: Any, output: Any) -> Any:
        return _replace_first(output, s.run_point(point, _first(output)))

    return hook


def _input_hook(s: Steering, point: _Point) -> Callable:
    def hook(_module: Any, args: tuple, kwargs: dict) -> Any:
        if args:
            return (s.run_point(point, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": s.run_point(point, kwargs["hidden_states"])}

    return hook
