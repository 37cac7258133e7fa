"""One site vocabulary for every backend and every supported architecture.

A *site* names a place in the residual computation of one transformer block, written
``"<kind>.<layer>"``:

=============  ===================================================  ==========================
kind           what it is (shape)                                   TransformerLens hook
=============  ===================================================  ==========================
resid_pre      input of block L            ``[batch, pos, d_model]``  ``blocks.L.hook_resid_pre``
attn_out       what the attention branch adds to the residual       ``blocks.L.hook_attn_out``
resid_mid      residual after the attention add, before the MLP's   ``blocks.L.hook_resid_mid``
mlp_post       MLP hidden activation   ``[batch, pos, d_mlp]``       ``blocks.L.mlp.hook_post``
mlp_out        what the MLP branch adds to the residual             ``blocks.L.hook_mlp_out``
resid_post     output of block L                                    ``blocks.L.hook_resid_post``
=============  ===================================================  ==========================

``attn_out`` and ``mlp_out`` are always the tensors *added to the residual stream*; where a
family normalises a branch's output before the add (Gemma 2/3, OLMo 2), that is the normed one.
So in every sequential block ``resid_mid = resid_pre + attn_out`` and
``resid_post = resid_mid + mlp_out``; in a parallel block ``resid_post = resid_pre + attn_out +
mlp_out``. ``mlp_post`` is the input of the MLP's down projection (after the activation, and
after the gate product in gated MLPs, fused or not).

Each kind maps to an HF module of the block and whether the tensor is that module's input or
output; the same module path with ``.input``/``.output`` is the nnsight envoy. The layouts, read
from the modeling code of transformers 5 (``handle.architecture`` is ``config.model_type``; the
block list is relative to ``model.base_model``, the modules to a block):

- llama, mistral, qwen2, qwen3, gemma, smollm3, phi3 [1] (sequential; blocks ``layers``):
  attn_out ``self_attn`` out, resid_mid ``post_attention_layernorm`` in, mlp_post
  ``mlp.down_proj`` in, mlp_out ``mlp`` out.
- gemma2, gemma3_text (sequential, normed branches; ``layers``): attn_out
  ``post_attention_layernorm`` out, resid_mid ``pre_feedforward_layernorm`` in, mlp_post
  ``mlp.down_proj`` in, mlp_out ``post_feedforward_layernorm`` out.
- olmo2 [2] (sequential, normed branches; ``layers``): as Gemma 2 but resid_mid ``mlp`` in.
- gpt2 (sequential; ``h``): attn_out ``attn`` out, resid_mid ``ln_2`` in, mlp_post
  ``mlp.c_proj`` in, mlp_out ``mlp`` out.
- gpt_neox [3] (parallel; ``layers``): attn_out ``attention`` out, no resid_mid, mlp_post
  ``mlp.dense_4h_to_h`` in, mlp_out ``mlp`` out.
- gptj [3] (parallel; ``h``): attn_out ``attn`` out, no resid_mid, mlp_post ``mlp.fc_out`` in,
  mlp_out ``mlp`` out.
- bert, roberta [4] (post-LN; ``encoder.layer``): attn_out ``attention.output.dense`` out,
  resid_mid ``attention`` out, mlp_post ``intermediate`` out, mlp_out ``output.dense`` out.

resid_pre and resid_post are the block's input and output everywhere.

[1] Phi-3 fuses the gate and up projections (``gate_up_proj``); the layout is Llama's.
[2] OLMo 2 normalises each branch's output and has no norm before the branches, so the MLP
reads ``resid_mid`` itself.
[3] GPT-J and GPT-NeoX with ``use_parallel_residual=True`` (Pythia, the default) run attention
and MLP side by side on the same block input, so no residual point lies between them and
``resid_mid`` raises :class:`SiteError`. GPT-NeoX with ``use_parallel_residual=False`` is
sequential and has ``resid_mid`` (``post_attention_layernorm`` in).
[4] BERT is post-LayerNorm: ``resid_mid = LN(resid_pre + attn_out)`` is the attention block's
output after its LayerNorm, which is what the MLP reads, and ``resid_post = LN(resid_mid +
mlp_out)``; ``attn_out``/``mlp_out`` are the branch outputs before dropout and the add.

``output_hidden_states``: HF's ``hidden_states[L]`` is ``resid_pre.L`` and ``hidden_states[L+1]``
is ``resid_post.L``, except the last entry, which every decoder family above returns *after*
its final norm (``norm``, ``ln_f`` or ``final_layer_norm``, see :func:`final_norm`); BERT has
no final norm, so its last entry is ``resid_post`` of the last block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:  # annotations only: models.py imports this module
    from steerlab.models import ModelHandle

SITE_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_post", "mlp_out", "resid_post")

Residual = Literal["sequential", "parallel", "post_ln"]


@dataclass(frozen=True)
class _HFSpec:
    """Where a site lives relative to its block: module path, input or output."""

    path: str  # relative to the block ("" = the block itself)
    io: Literal["input", "output"]


_IN, _OUT = "input", "output"


@dataclass(frozen=True)
class Layout:
    """How one architecture's blocks build the residual stream, and where each site lives."""

    name: str
    """Display name used in messages ("GPT-J")."""
    blocks: str
    """Path of the ModuleList of blocks, relative to ``model.base_model``."""
    residual: Residual
    """``"sequential"``: resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out;
    ``"parallel"``: both branches read resid_pre, resid_post = resid_pre + attn_out + mlp_out;
    ``"post_ln"``: the sums are followed by LayerNorms (BERT)."""
    sites: dict[str, _HFSpec] = field(repr=False)
    """kind -> where it is in a block; kinds the architecture lacks are absent."""
    final_norm: str | None
    """Path of the norm after the last block (relative to ``model.base_model``), or None."""
    causal: bool = True
    """Decoder (True) or encoder (False)."""

    def missing_reason(self, kind: str) -> str:
        """Why this layout has no ``kind`` site (only called for absent kinds)."""
        if self.residual == "parallel" and kind == "resid_mid":
            return (
                f"{self.name} blocks run attention and MLP in parallel on the same input "
                "(resid_post = resid_pre + attn_out + mlp_out), so no residual point lies between "
                "them; use resid_pre (what both branches read), attn_out, mlp_out or resid_post"
            )
        return f"{self.name} blocks have no {kind} point"


def _llama_like(name: str) -> Layout:
    return Layout(
        name=name,
        blocks="layers",
        residual="sequential",
        sites={
            "resid_pre": _HFSpec("", _IN),
            "attn_out": _HFSpec("self_attn", _OUT),
            "resid_mid": _HFSpec("post_attention_layernorm", _IN),
            "mlp_post": _HFSpec("mlp.down_proj", _IN),
            "mlp_out": _HFSpec("mlp", _OUT),
            "resid_post": _HFSpec("", _OUT),
        },
        final_norm="norm",
    )


def _sandwich(name: str, mlp_reads: str) -> Layout:
    """Gemma 2/3 and OLMo 2: each branch's output is normalised before it joins the residual."""
    return Layout(
        name=name,
        blocks="layers",
        residual="sequential",
        sites={
            "resid_pre": _HFSpec("", _IN),
            "attn_out": _HFSpec("post_attention_layernorm", _OUT),
            "resid_mid": _HFSpec(mlp_reads, _IN),
            "mlp_post": _HFSpec("mlp.down_proj", _IN),
            "mlp_out": _HFSpec("post_feedforward_layernorm", _OUT),
            "resid_post": _HFSpec("", _OUT),
        },
        final_norm="norm",
    )


def _plain(name: str, blocks: str, attn: str, mlp_down: str, mid: str | None, norm: str) -> Layout:
    """GPT-2, GPT-NeoX, GPT-J: ``attn``/``mlp`` branch modules, ``mid`` None when parallel."""
    sites = {
        "resid_pre": _HFSpec("", _IN),
        "attn_out": _HFSpec(attn, _OUT),
        "mlp_post": _HFSpec(f"mlp.{mlp_down}", _IN),
        "mlp_out": _HFSpec("mlp", _OUT),
        "resid_post": _HFSpec("", _OUT),
    }
    if mid is not None:
        sites["resid_mid"] = _HFSpec(mid, _IN)
    residual: Residual = "sequential" if mid is not None else "parallel"
    return Layout(name, blocks, residual, sites, final_norm=norm)


def _bert(name: str) -> Layout:
    return Layout(
        name=name,
        blocks="encoder.layer",
        residual="post_ln",
        sites={
            "resid_pre": _HFSpec("", _IN),
            "attn_out": _HFSpec("attention.output.dense", _OUT),
            "resid_mid": _HFSpec("attention", _OUT),
            "mlp_post": _HFSpec("intermediate", _OUT),
            "mlp_out": _HFSpec("output.dense", _OUT),
            "resid_post": _HFSpec("", _OUT),
        },
        final_norm=None,
        causal=False,
    )


#: HF ``config.model_type`` -> layout. Every entry is exercised by tests/test_architectures.py.
ARCHITECTURES: dict[str, Layout] = {
    "llama": _llama_like("Llama"),
    "mistral": _llama_like("Mistral"),
    "qwen2": _llama_like("Qwen2"),
    "qwen3": _llama_like("Qwen3"),
    "gemma": _llama_like("Gemma"),
    "smollm3": _llama_like("SmolLM3"),
    "phi3": _llama_like("Phi-3"),
    "gemma2": _sandwich("Gemma 2", "pre_feedforward_layernorm"),
    "gemma3_text": _sandwich("Gemma 3", "pre_feedforward_layernorm"),
    "olmo2": _sandwich("OLMo 2", "mlp"),
    "gpt2": _plain("GPT-2", "h", "attn", "c_proj", "ln_2", "ln_f"),
    "gpt_neox": _plain(
        "GPT-NeoX", "layers", "attention", "dense_4h_to_h", None, "final_layer_norm"
    ),
    "gptj": _plain("GPT-J", "h", "attn", "fc_out", None, "ln_f"),
    "bert": _bert("BERT"),
    "roberta": _bert("RoBERTa"),
}

# GPT-NeoX is parallel by default (Pythia); use_parallel_residual=False makes it sequential.
_GPT_NEOX_SEQUENTIAL = _plain(
    "GPT-NeoX (sequential)", "layers", "attention", "dense_4h_to_h", "post_attention_layernorm",
    "final_layer_norm",
)  # fmt: skip

_TL_NAMES = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "attn_out": "blocks.{L}.hook_attn_out",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "mlp_post": "blocks.{L}.mlp.hook_post",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "resid_post": "blocks.{L}.hook_resid_post",
}

_SITE_RE = re.compile(r"^([a-z_]+)\.(-?\d+)$")


class SiteError(ValueError):
    """An unknown site name, a layer out of range, a site the architecture lacks, or an
    architecture without a site map; the message says which and what is valid."""


def supported_architectures() -> list[str]:
    """The ``config.model_type`` values steerlab has site maps for."""
    return sorted(ARCHITECTURES)


def layout_of(architecture: str, config: Any = None) -> Layout:
    """The layout of an architecture (``config.model_type``), given its config if at hand.

    Raises:
        SiteError: steerlab has no site map for ``architecture``; the message lists those it has.
    """
    lay = ARCHITECTURES.get(architecture)
    if lay is None:
        raise SiteError(
            f"steerlab has no site map for architecture {architecture!r} (config.model_type); "
            f"supported: {supported_architectures()}. Add a Layout to "
            "steerlab.sites.ARCHITECTURES to support it."
        )
    if architecture == "gpt_neox" and not getattr(config, "use_parallel_residual", True):
        return _GPT_NEOX_SEQUENTIAL
    return lay


def layout(handle: ModelHandle) -> Layout:
    """The layout of ``handle.model`` (see :func:`layout_of`)."""
    return layout_of(handle.architecture, getattr(handle.model, "config", None))


@dataclass(frozen=True, order=True)
class Site:
    """A parsed site: ``kind`` at ``layer``. Sorts in execution order."""

    layer: int
    order: int
    kind: str

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.layer}"

    def __str__(self) -> str:
        return self.name

    def tl_name(self) -> str:
        """The TransformerLens (bridge) hook name."""
        return _TL_NAMES[self.kind].format(L=self.layer)


def valid_sites_message(n_layers: int | None = None) -> str:
    """Human-readable list of valid site names."""
    layers = f"0..{n_layers - 1}" if n_layers else "L"
    return f"valid sites are <kind>.<layer> with kind in {list(SITE_KINDS)} and layer in {layers}"


def parse_site(name: str | Site, n_layers: int | None = None) -> Site:
    """Parse ``"resid_post.6"`` into a :class:`Site`, checking the layer range if given.

    Negative layers count from the end (``resid_post.-1`` is the last block) when
    ``n_layers`` is known.
    """
    if isinstance(name, Site):
        site = name
    else:
        m = _SITE_RE.match(str(name).strip())
        if not m or m.group(1) not in SITE_KINDS:
            raise SiteError(f"unknown site {name!r}; {valid_sites_message(n_layers)}")
        kind, layer = m.group(1), int(m.group(2))
        if layer < 0:
            if n_layers is None:
                raise SiteError(f"site {name!r} uses a negative layer but n_layers is unknown")
            layer += n_layers
        site = Site(layer=layer, order=SITE_KINDS.index(kind), kind=kind)
    if n_layers is not None and not 0 <= site.layer < n_layers:
        raise SiteError(
            f"site {name!r}: layer {site.layer} is out of range for a model with {n_layers} "
            f"layers; {valid_sites_message(n_layers)}"
        )
    return site


def parse_sites(
    names: str | Site | Sequence[str | Site], n_layers: int | None = None
) -> list[Site]:
    """Parse a comma-separated string or list of names; sorted in execution order, unique."""
    if isinstance(names, (str, Site)):
        names = (
            [s for s in str(names).split(",") if s.strip()] if isinstance(names, str) else [names]
        )
    if not names:
        raise SiteError(f"no site given; {valid_sites_message(n_layers)}")
    return sorted({parse_site(n, n_layers) for n in names})


def all_sites(n_layers: int, kinds: tuple[str, ...] = SITE_KINDS) -> list[Site]:
    """Every site of a model, in execution order."""
    return parse_sites([f"{k}.{L}" for L in range(n_layers) for k in kinds], n_layers)


def site_kinds(handle: ModelHandle) -> tuple[str, ...]:
    """The site kinds ``handle``'s architecture has, in execution order."""
    return tuple(k for k in SITE_KINDS if k in layout(handle).sites)


def _get(module: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _base_prefix(model: Any) -> str:
    """Path of ``model.base_model`` inside ``model`` ("" when the model is the base model)."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), torch.nn.Module) else ""


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def block_path(handle: ModelHandle) -> str:
    """The dotted path of the blocks ModuleList inside ``handle.model``."""
    path = _join(_base_prefix(handle.model), layout(handle).blocks)
    try:
        _get(handle.model, path)
    except AttributeError as e:
        raise SiteError(
            f"{handle.model_id}: no block list at {path!r} in {type(handle.model).__name__}, "
            f"where the {layout(handle).name} layout expects it"
        ) from e
    return path


def block_list(handle: ModelHandle) -> torch.nn.ModuleList:
    """The ModuleList of transformer blocks of ``handle.model``."""
    return _get(handle.model, block_path(handle))


def final_norm(handle: ModelHandle) -> torch.nn.Module | None:
    """The norm applied after the last block (None for BERT): HF's ``hidden_states[-1]`` is
    ``final_norm(handle)(resid_post.<last>)``."""
    name = layout(handle).final_norm
    return None if name is None else _get(handle.model, _join(_base_prefix(handle.model), name))


def _spec(handle: ModelHandle, site: Site) -> _HFSpec:
    lay = layout(handle)
    spec = lay.sites.get(site.kind)
    if spec is None:
        raise SiteError(
            f"site {site.name!r} does not exist in {handle.model_id} "
            f"({lay.name}, model_type {handle.architecture!r}): {lay.missing_reason(site.kind)}"
        )
    return spec


def check_site(handle: ModelHandle, site: str | Site) -> Site:
    """Parse ``site`` and check that ``handle``'s architecture has it.

    Raises:
        SiteError: a bad name or layer, a kind the architecture lacks (e.g. ``resid_mid`` of a
            parallel block), or an architecture without a site map.
    """
    site = parse_site(site, handle.n_layers)
    _spec(handle, site)
    return site


@dataclass(frozen=True)
class HFLocation:
    """A site resolved on an HF model: the module, its dotted path, input or output."""

    site: Site
    module: torch.nn.Module
    path: str
    io: Literal["input", "output"]


def hf_location(handle: ModelHandle, site: str | Site) -> HFLocation:
    """Resolve a site to the HF module (and input/output) that carries it."""
    site = parse_site(site, handle.n_layers)
    spec = _spec(handle, site)
    path = _join(block_path(handle), str(site.layer), spec.path)
    return HFLocation(site=site, module=_get(handle.model, path), path=path, io=spec.io)


def resid_mid_is_written_via_attn_out(handle: ModelHandle) -> bool:
    """Whether writing ``resid_mid`` must edit ``attn_out`` instead of the module input.

    True for every sequential block: the module input that carries ``resid_mid`` (the MLP's
    pre-norm, or the MLP itself in OLMo 2) feeds only the MLP branch, while the residual stream
    keeps its own reference to ``resid_pre + attn_out``. False for post-LN BERT, where the
    attention block's output is both (editing it edits the residual). Parallel blocks have no
    ``resid_mid``.
    """
    return layout(handle).residual == "sequential"


def nnsight_envoy(lm: Any, handle: ModelHandle, site: str | Site) -> Any:
    """The nnsight envoy (``...input`` or ``...output``) of a site on a ``LanguageModel``."""
    module, io = nnsight_module(lm, handle, site)
    return getattr(module, io)


def nnsight_module(lm: Any, handle: ModelHandle, site: str | Site) -> tuple[Any, str]:
    """The module envoy of a site on a ``LanguageModel`` and which side holds it (``"input"``
    or ``"output"``), resolved without a trace: a remote trace body that reads
    ``getattr(module, io)`` then refers to nnsight objects only, not to ``handle``."""
    loc = hf_location(handle, site)
    return _get(lm, loc.path), loc.io


def site_width(handle: ModelHandle, site: str | Site) -> int:
    """Width of the tensor at a site (d_model, or d_mlp for ``mlp_post``).

    Raises:
        SiteError: the site does not exist in ``handle``'s architecture.
    """
    site = check_site(handle, site)
    if site.kind == "mlp_post":
        cfg = handle.model.config
        return int(
            getattr(cfg, "intermediate_size", None)
            or getattr(cfg, "n_inner", None)
            or 4 * handle.d_model
        )
    return handle.d_model
