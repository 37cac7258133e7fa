"""One site vocabulary for every backend.

A *site* names a place in the residual computation of one transformer block, written
``"<kind>.<layer>"``:

=============  ===================================================  ==========================
kind           what it is (shape)                                   TransformerLens hook
=============  ===================================================  ==========================
resid_pre      input of block L            ``[batch, pos, d_model]``  ``blocks.L.hook_resid_pre``
attn_out       attention output, before the residual add            ``blocks.L.hook_attn_out``
resid_mid      residual after attention, before the MLP             ``blocks.L.hook_resid_mid``
mlp_post       MLP hidden activation   ``[batch, pos, d_mlp]``       ``blocks.L.mlp.hook_post``
mlp_out        MLP output, before the residual add                  ``blocks.L.hook_mlp_out``
resid_post     output of block L                                    ``blocks.L.hook_resid_post``
=============  ===================================================  ==========================

Each kind maps to an HF module and whether the tensor is that module's input or output, for
Llama-family (Llama, Mistral, Qwen, SmolLM), GPT-2 and BERT models; the same module path with
``.input``/``.output`` is the nnsight envoy. For post-LayerNorm BERT, ``resid_mid`` is the
attention block's output after its LayerNorm, which is what the MLP reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

SITE_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_post", "mlp_out", "resid_post")

#: Candidate paths of the ModuleList of blocks, tried in order.
_BLOCK_PATHS = {
    "llama": ("model.layers", "layers"),
    "gpt2": ("transformer.h", "h"),
    "bert": ("bert.encoder.layer", "encoder.layer"),
}


@dataclass(frozen=True)
class _HFSpec:
    """Where a site lives relative to its block: module path, input or output."""

    path: str  # relative to the block ("" = the block itself)
    io: Literal["input", "output"]


_HF_SPECS: dict[str, dict[str, _HFSpec]] = {
    "llama": {
        "resid_pre": _HFSpec("", "input"),
        "attn_out": _HFSpec("self_attn", "output"),
        "resid_mid": _HFSpec("post_attention_layernorm", "input"),
        "mlp_post": _HFSpec("mlp.down_proj", "input"),
        "mlp_out": _HFSpec("mlp", "output"),
        "resid_post": _HFSpec("", "output"),
    },
    "gpt2": {
        "resid_pre": _HFSpec("", "input"),
        "attn_out": _HFSpec("attn", "output"),
        "resid_mid": _HFSpec("ln_2", "input"),
        "mlp_post": _HFSpec("mlp.c_proj", "input"),
        "mlp_out": _HFSpec("mlp", "output"),
        "resid_post": _HFSpec("", "output"),
    },
    "bert": {
        "resid_pre": _HFSpec("", "input"),
        "attn_out": _HFSpec("attention.output.dense", "output"),
        "resid_mid": _HFSpec("attention", "output"),
        "mlp_post": _HFSpec("intermediate", "output"),
        "mlp_out": _HFSpec("output.dense", "output"),
        "resid_post": _HFSpec("", "output"),
    },
}

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
    """An unknown site name or a layer out of range; the message lists the valid sites."""


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


def parse_sites(names: str | Site | list[str | Site], n_layers: int | None = None) -> list[Site]:
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


def _get(module: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def block_path(handle: Any) -> str:
    """The dotted path of the blocks ModuleList inside ``handle.model``."""
    for path in _BLOCK_PATHS.get(handle.architecture, ()):
        try:
            _get(handle.model, path)
        except AttributeError:
            continue
        return path
    raise NotImplementedError(
        f"steerlab has no site map for architecture {handle.architecture!r} "
        f"(supported: {sorted(_HF_SPECS)})"
    )


def block_list(handle: Any) -> torch.nn.ModuleList:
    """The ModuleList of transformer blocks of ``handle.model``."""
    return _get(handle.model, block_path(handle))


@dataclass(frozen=True)
class HFLocation:
    """A site resolved on an HF model: the module, its dotted path, input or output."""

    site: Site
    module: torch.nn.Module
    path: str
    io: Literal["input", "output"]


def hf_location(handle: Any, site: str | Site) -> HFLocation:
    """Resolve a site to the HF module (and input/output) that carries it."""
    site = parse_site(site, handle.n_layers)
    spec = _HF_SPECS[handle.architecture][site.kind]
    path = f"{block_path(handle)}.{site.layer}" + (f".{spec.path}" if spec.path else "")
    return HFLocation(site=site, module=_get(handle.model, path), path=path, io=spec.io)


def nnsight_envoy(lm: Any, handle: Any, site: str | Site) -> Any:
    """The nnsight envoy (``...input`` or ``...output``) of a site on a ``LanguageModel``."""
    loc = hf_location(handle, site)
    return getattr(_get(lm, loc.path), loc.io)


def site_width(handle: Any, site: str | Site) -> int:
    """Width of the tensor at a site (d_model, or d_mlp for ``mlp_post``)."""
    site = parse_site(site, handle.n_layers)
    if site.kind == "mlp_post":
        cfg = handle.model.config
        return int(
            getattr(cfg, "intermediate_size", None)
            or getattr(cfg, "n_inner", None)
            or 4 * handle.d_model
        )
    return handle.d_model
