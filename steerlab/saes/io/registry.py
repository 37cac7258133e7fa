"""A local SAE registry in SAELens's ``pretrained_saes.yaml`` shape.

    my-release:                    # the release name
      repo_id: /data/saes/my-run   # a local directory (absolute, or relative to this file),
                                   # or a hub repo id (used only when the hub is reachable)
      model: smollm2-135m-instruct
      conversion_func: null        # optional; steerlab recognises the layout itself
      saes:
      - id: layer_6                # the sae_id
        path: resid_post.6         # folder inside repo_id
        neuronpedia: smollm2/6-res # optional, as SAELens
        norm_scaling_factor: 1.7   # optional: folded in for expected_average_only_in

These are the keys SAELens's ``get_pretrained_saes_directory`` reads (``release -> {repo_id,
model, conversion_func, config_overrides, saes: [{id, path, l0, variance_explained,
neuronpedia, norm_scaling_factor}]}``), so the same file serves both tools.

Registries come from the ``registry`` argument, else ``$STEERLAB_SAE_REGISTRY`` (one path or
several joined by ``os.pathsep``); the first file naming the release wins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from huggingface_hub import snapshot_download

REGISTRY_ENV = "STEERLAB_SAE_REGISTRY"


class RegistryEntry(NamedTuple):
    """One SAE of a registry.

    Attributes:
        release: the release name.
        sae_id: the SAE's id in the release.
        repo_id: the release's ``repo_id`` as written.
        folder: the SAE's ``path`` inside the release.
        local: the SAE's directory on disk when ``repo_id`` is a local directory, else None.
        model: the release's ``model``.
        norm_scaling_factor: the entry's ``norm_scaling_factor`` (None if absent).
        registry: the YAML file it came from.
    """

    release: str
    sae_id: str
    repo_id: str
    folder: str
    local: Path | None
    model: str | None
    norm_scaling_factor: float | None
    registry: Path


def registry_files(registry: str | os.PathLike | list[Any] | None = None) -> list[Path]:
    """The registry YAML files to search: the argument, else ``$STEERLAB_SAE_REGISTRY``."""
    if registry is None:
        env = os.environ.get(REGISTRY_ENV, "")
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if isinstance(registry, list):
        return [Path(p).expanduser() for p in registry]
    return [Path(registry).expanduser()]


def read_registry(path: Path) -> dict[str, Any]:
    """Parse one registry file (``yaml.safe_load``), checking the SAELens shape."""
    if not path.is_file():
        raise FileNotFoundError(f"SAE registry {path} does not exist (set ${REGISTRY_ENV} or "
                                "pass registry=)")  # fmt: skip
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a registry maps release names to entries, got "
                         f"{type(data).__name__}")  # fmt: skip
    for release, entry in data.items():
        if not isinstance(entry, dict) or "repo_id" not in entry or "saes" not in entry:
            raise ValueError(f"{path}: release {release!r} needs 'repo_id' and 'saes' (the "
                             "pretrained_saes.yaml shape)")  # fmt: skip
        for sae in entry["saes"]:
            if not isinstance(sae, dict) or "id" not in sae or "path" not in sae:
                raise ValueError(f"{path}: every SAE of {release!r} needs 'id' and 'path'")
    return data


def lookup(
    release: str, sae_id: str | None, registry: str | os.PathLike | list[Any] | None = None
) -> RegistryEntry | None:
    """The entry for ``release`` / ``sae_id``, or None when no registry names the release.

    Raises:
        ValueError: the release exists but has no such ``sae_id`` (the valid ids are listed),
            or ``sae_id`` is None.
    """
    for f in registry_files(registry):
        data = read_registry(f)
        if release not in data:
            continue
        entry = data[release]
        saes = {str(s["id"]): s for s in entry["saes"]}
        if sae_id is None or str(sae_id) not in saes:
            shown = sorted(saes)[:8]
            more = ", ..." if len(saes) > 8 else ""
            what = "needs an sae_id" if sae_id is None else f"has no SAE {sae_id!r}"
            raise ValueError(f"release {release!r} ({f}) {what}; its ids: {shown}{more}")
        s = saes[str(sae_id)]
        repo = str(entry["repo_id"])
        base = Path(repo).expanduser()
        base = base if base.is_absolute() else f.parent / base
        local = base / str(s["path"]) if base.is_dir() else None
        nsf = s.get("norm_scaling_factor")
        return RegistryEntry(release, str(sae_id), repo, str(s["path"]), local,
                             entry.get("model"), None if nsf is None else float(nsf), f)  # fmt: skip
    return None


def hub_download(entry: RegistryEntry) -> Path:
    """Fetch an entry's folder from the hub; fails at once, in one line, when offline.

    Raises:
        ConnectionError: ``HF_HUB_OFFLINE`` is set or the hub cannot be reached.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no"):
        raise ConnectionError(
            f"{entry.release}/{entry.sae_id}: {entry.repo_id!r} is not a local directory and "
            "the hub is offline (HF_HUB_OFFLINE); point repo_id in "
            f"{entry.registry} at a local copy"
        )
    try:
        root = snapshot_download(entry.repo_id, allow_patterns=[f"{entry.folder}/*"])
    except Exception as e:  # any network or hub error: one clear line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConnectionError(f"{entry.release}/{entry.sae_id}: cannot fetch {entry.repo_id!r} "
                              f"from the hub ({first})") from None  # fmt: skip
    return Path(root) / entry.folder
