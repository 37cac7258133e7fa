"""Bring your own SAE: one :func:`load_sae` for every layout steerlab reads, and the writers.

    >>> from steerlab.saes import load_sae
    >>> sae = load_sae("runs/sae")                          # steerlab's own directory
    >>> sae = load_sae("sl_dir")                            # a SAELens directory
    >>> sae = load_sae("sparsify_run", "layers.6")          # one hookpoint of a sparsify run
    >>> sae = load_sae("dl/trainer_0")                      # dictionary_learning ae.pt + config
    >>> sae = load_sae("layer_6/width_16k/params.npz")      # Gemma Scope
    >>> sae = load_sae("my-release", "layer_6")             # a release in a local registry

Layouts, recognised from the files present (first match wins, in this order):

============================  =================================================  ===========
layout                        files                                              module
============================  =================================================  ===========
steerlab                      ``cfg.json`` (``kind: "sae"``) + ``sae.safetensors``  ``formats``
SAELens                       ``cfg.json`` + ``sae_weights.safetensors``          ``saelens``
sparsify (one hookpoint)      ``cfg.json`` (sparsify fields) + ``sae.safetensors``  ``sparsify``
dictionary_learning           ``ae.pt`` + ``config.json``                         ``dictionary_learning``
Gemma Scope                   ``params.npz``                                      ``gemma_scope``
sparsify run                  ``<hookpoint>/`` sparsify directories               ``sparsify``
============================  =================================================  ===========

Anything else is an error that lists these layouts and the files found. Writers:
:func:`save_sae` (steerlab), :func:`save_saelens`, :func:`save_sparsify` /
:func:`save_sparsify_run`, :func:`save_dictionary_learning`, :func:`save_gemma_scope`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from steerlab.models import ModelHandle
from steerlab.saes import formats as _steerlab  # partially imported while formats loads us
from steerlab.saes.io.dictionary_learning import (
    DL_CONFIG,
    DL_WEIGHTS,
    load_dictionary_learning,
    save_dictionary_learning,
)
from steerlab.saes.io.gemma_scope import GEMMA_SCOPE_FILE, load_gemma_scope, save_gemma_scope
from steerlab.saes.io.registry import REGISTRY_ENV, RegistryEntry, hub_download, lookup
from steerlab.saes.io.saelens import (
    SAELENS_CFG,
    SAELENS_WEIGHTS,
    load_saelens,
    load_saelens_sparsity,
    save_saelens,
)
from steerlab.saes.io.sparsify import (
    SPARSIFY_WEIGHTS,
    is_sparsify_dir,
    load_sparsify,
    load_sparsify_run,
    save_sparsify,
    save_sparsify_run,
    sparsify_hookpoints,
)
from steerlab.saes.normalize import NormalizedSae
from steerlab.saes.sae import Sae
from steerlab.sites import parse_site, site_width

logger = logging.getLogger(__name__)

LAYOUTS = {
    "steerlab": "cfg.json with kind 'sae' + sae.safetensors",
    "saelens": "cfg.json + sae_weights.safetensors",
    "sparsify": "cfg.json (sparsify fields) + sae.safetensors",
    "dictionary_learning": "ae.pt + config.json",
    "gemma_scope": "params.npz",
    "sparsify_run": "<hookpoint>/ sparsify directories (pass the hookpoint as sae_id)",
}
"""Every layout :func:`load_sae` recognises, with the files that identify it."""

AnySae = Sae | NormalizedSae


def detect_layout(path: str | os.PathLike) -> str:
    """The layout of a file or directory (a key of :data:`LAYOUTS`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no known layout; the message lists :data:`LAYOUTS` and the files found.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.is_file():
        if path.name.endswith(".npz"):
            return "gemma_scope"
        if path.suffix == ".pt" and (path.parent / DL_CONFIG).is_file():
            return "dictionary_learning"
        return _unknown(path, [path.name])
    names = {p.name for p in path.iterdir()}
    if SAELENS_CFG in names and f"{_steerlab.SAE_KIND}.safetensors" in names and _is_steerlab(path):
        return "steerlab"
    if SAELENS_CFG in names and SAELENS_WEIGHTS in names:
        return "saelens"
    if SAELENS_CFG in names and SPARSIFY_WEIGHTS in names and is_sparsify_dir(path):
        return "sparsify"
    if DL_WEIGHTS in names and DL_CONFIG in names:
        return "dictionary_learning"
    if GEMMA_SCOPE_FILE in names:
        return "gemma_scope"
    if sparsify_hookpoints(path):
        return "sparsify_run"
    return _unknown(path, sorted(names))


def _is_steerlab(path: Path) -> bool:
    try:
        return json.loads((path / SAELENS_CFG).read_text()).get("kind") == _steerlab.SAE_KIND
    except (json.JSONDecodeError, AttributeError):
        return False


def _unknown(path: Path, names: list[str]) -> str:
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") or "nothing"
    understood = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    raise ValueError(f"{path}: not an SAE layout steerlab understands (found: {shown}). "
                     f"Understood layouts: {understood}")  # fmt: skip


def check_fits(sae: AnySae, handle: ModelHandle, site: str | None = None) -> None:
    """Raise if ``sae`` cannot read ``site`` (default ``sae.cfg.site``) of ``handle``'s model.

    Raises:
        ValueError: no site, or a site width other than ``sae.d_in`` (an SAE for another
            model or site).
    """
    site = site or sae.cfg.site
    if site is None:
        raise ValueError("the SAE has no cfg.site; pass site= to check it against a model")
    s = parse_site(site, handle.n_layers)
    width = site_width(handle, s)
    if width != sae.d_in:
        raise ValueError(f"the SAE reads {sae.d_in}-wide activations, but {handle.model_id}'s "
                         f"{s.name} is {width} wide: a checkpoint for another model or site "
                         f"({sae.cfg.model_id or 'model unknown'})")  # fmt: skip


def load_sae(
    path_or_release: str | os.PathLike,
    sae_id: str | None = None,
    *,
    device: str | torch.device = "cpu",
    registry: str | os.PathLike | list[Any] | None = None,
    handle: ModelHandle | None = None,
) -> AnySae:
    """Load an SAE from any layout steerlab reads, or from a registry release.

    Args:
        path_or_release: a file or directory (see the module's table), or a release name of a
            registry in SAELens's ``pretrained_saes.yaml`` shape (:mod:`.registry`).
        sae_id: a sparsify run's hookpoint, a sub-folder of ``path_or_release``, or the SAE's
            id in the release.
        device: where to put the SAE.
        registry: registry YAML file(s); default ``$STEERLAB_SAE_REGISTRY``.
        handle: if given, the SAE must fit its site on this model (:func:`check_fits`).

    Raises:
        FileNotFoundError: neither a path nor a release of any registry.
        ValueError: an unknown layout (the error lists :data:`LAYOUTS`), an unsupported
            option, weights that disagree with the config, or an SAE that does not fit.
        ConnectionError: a release on the hub while the hub is unreachable.
    """
    path = Path(path_or_release).expanduser()
    norm_scaling_factor = None
    if not path.exists():
        entry = lookup(str(path_or_release), sae_id, registry)
        if entry is None:
            regs = registry if registry is not None else os.environ.get(REGISTRY_ENV) or "none set"
            raise FileNotFoundError(f"{path_or_release!r} is neither a file or directory nor a "
                                    f"release of a registry ({regs})")  # fmt: skip
        path = entry.local if entry.local is not None else hub_download(entry)
        norm_scaling_factor, sae_id = entry.norm_scaling_factor, None
        if not path.exists():
            raise FileNotFoundError(f"{entry.release}/{entry.sae_id}: {path} does not exist "
                                    f"(registry {entry.registry})")  # fmt: skip
    layout = detect_layout(path)
    if sae_id is not None and layout != "sparsify_run":
        if not (path / str(sae_id)).exists():
            raise FileNotFoundError(f"{path} has no {sae_id!r} inside")
        return load_sae(path / str(sae_id), device=device, handle=handle)
    if layout == "steerlab":
        sae: AnySae = _steerlab.load_sae(path, device=device)
    elif layout == "saelens":
        sae = load_saelens(path, device, norm_scaling_factor=norm_scaling_factor)
    elif layout == "sparsify":
        sae = load_sparsify(path, device)
    elif layout == "dictionary_learning":
        sae = load_dictionary_learning(path, device)
    elif layout == "gemma_scope":
        sae = load_gemma_scope(path, device)
    else:
        hooks = sparsify_hookpoints(path)
        if sae_id is None:
            raise ValueError(f"{path} is a sparsify run with {len(hooks)} SAEs {hooks}: pass one "
                             "as sae_id, or read them all with load_saes")  # fmt: skip
        if str(sae_id) not in hooks:
            raise ValueError(f"{path}: no hookpoint {sae_id!r}; it has {hooks}")
        sae = load_sparsify(path / str(sae_id), device)
    if handle is not None:
        check_fits(sae, handle)
    return sae


def load_saes(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, AnySae]:
    """Every SAE of a directory: a sparsify run by hookpoint, else ``{name: load_sae(path)}``."""
    path = Path(path).expanduser()
    if detect_layout(path) == "sparsify_run":
        return dict(load_sparsify_run(path, device))
    return {path.name: load_sae(path, device=device)}


__all__ = [
    "LAYOUTS",
    "REGISTRY_ENV",
    "RegistryEntry",
    "check_fits",
    "detect_layout",
    "load_dictionary_learning",
    "load_gemma_scope",
    "load_sae",
    "load_saelens",
    "load_saelens_sparsity",
    "load_saes",
    "load_sparsify",
    "load_sparsify_run",
    "save_dictionary_learning",
    "save_gemma_scope",
    "save_saelens",
    "save_sparsify",
    "save_sparsify_run",
]
