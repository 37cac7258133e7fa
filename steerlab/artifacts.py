"""Artifacts on disk: a directory with ``cfg.json`` and ``<kind>.safetensors``.

Every saved object in steerlab (subspaces, erasers, probes, steering vectors, SAEs,
interventions, ...) uses this layout. Nothing is ever pickled: tensors go to safetensors,
everything else to JSON.

**The header.** :func:`save_artifact` writes the same header fields at the top of every
``cfg.json``, beside the kind's own configuration (:data:`HEADER`):

- ``kind`` — which class reads the directory (the safetensors file is ``<kind>.safetensors``);
- ``format_version`` — of this layout (:data:`FORMAT_VERSION`);
- ``d_in`` — the activation width, under this one name for every kind (as SAELens and sparsify
  spell it); null only where a kind has no single width;
- ``site`` — where in the model the artifact acts or was read (comma-separated when several);
- ``model_id`` and ``tokenizer_hash`` (:meth:`ModelHandle.tokenizer_fingerprint`) where known;
- ``steerlab_version`` — the version that wrote it.

:func:`check_header` validates it on every load. Files written before the header existed
(format version 0: the width spelled ``d_model``, no ``format_version``) are upgraded in memory
when read, so they keep loading.

**The kind table.** :data:`KIND_TABLE` maps every kind steerlab saves to ``"module:Class"`` and
is resolved lazily: :func:`load` imports the one module it needs, so it works in a fresh
process for every kind. Classes still declare their kind with :func:`register`, which checks the
table (a test walks every module and checks the table covers every registered class). Kinds
defined outside steerlab register the same way and load once their module has been imported.

**The shared base.** :class:`FrozenArtifact` gives a frozen dataclass ``save(dir)`` and
``load(dir)``: tensor fields go to safetensors, the other fields to ``cfg.json``.

Writes are atomic (:func:`steerlab.io.atomic_dir`): a crash or a full disk never leaves a
half-written artifact under the final name, and the previous version stays intact.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import save_file
from torch import Tensor

from steerlab import __version__
from steerlab.errors import FormatError, MissingFileError
from steerlab.io import atomic_dir
from steerlab.validation import (
    check_fields,
    json_matches,
    json_view,
    load_tensors,
    read_json,
    reading,
    require,
    show,
)

__all__ = [
    "CFG_NAME",
    "FORMAT_VERSION",
    "HEADER",
    "KIND_TABLE",
    "FrozenArtifact",
    "check_header",
    "check_json",
    "kind_class",
    "load",
    "load_artifact",
    "read_cfg",
    "register",
    "save_artifact",
    "tensors_name",
]

CFG_NAME = "cfg.json"
"""The JSON file of every artifact directory."""

FORMAT_VERSION = 1
"""Version of the ``cfg.json`` header written now. 0: files from before the header (read by
upgrading them, see :func:`read_cfg`)."""

HEADER: dict[str, tuple[type | None, ...]] = {
    "kind": (str,),
    "format_version": (int,),
    "d_in": (int, None),
    "site": (str, None),
    "model_id": (str, None),
    "tokenizer_hash": (str, None),
    "steerlab_version": (str,),
}
"""Header field -> the JSON types it may hold (None: null allowed)."""

#: Every artifact kind steerlab saves -> ``"module:Class"`` of the class that loads it. The
#: module is imported on first use only (see :func:`kind_class`).
KIND_TABLE: dict[str, str] = {
    "subspace": "steerlab.subspace:Subspace",
    "leace": "steerlab.erasure.leace:LeaceEraser",
    "rlace": "steerlab.erasure.rlace:RlaceEraser",
    "inlp": "steerlab.erasure.inlp:InlpEraser",
    "pls": "steerlab.probes.pls_probe:PLSProbe",
    "linear_probe": "steerlab.probes.linear:LinearProbe",
    "ast_probe": "steerlab.probes.ast.artifact:AstProbe",
    "ast_features": "steerlab.probes.ast.features:LeafFeatures",
    "steering_vector": "steerlab.steering.vector_artifact:SteeringVector",
    "sae": "steerlab.saes.formats:SaeArtifact",
    # interventions (steerlab.interventions.register_intervention)
    "low_rank_edit": "steerlab.interventions.algebra:LowRankEdit",
    "compose": "steerlab.interventions.algebra:Compose",
    "add_vector": "steerlab.interventions.kinds:AddVector",
    "set_coords": "steerlab.interventions.kinds:SetCoords",
    "ablate": "steerlab.interventions.kinds:Ablate",
    "loreft": "steerlab.interventions.kinds:LoReFT",
    "eraser_edit": "steerlab.erasure.scrub:EraserEdit",
    "sae_splice": "steerlab.saes.splice:SaeSplice",
    "replace": "steerlab.saes.splice:Replace",
    "msrs": "steerlab.steering.msrs:MSRS",
}

_REGISTRY: dict[str, type] = {}
_LEGACY_WIDTH = "d_model"  # format 0 spelled the width of most kinds this way

T = TypeVar("T")


def _path_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register(kind: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``cls`` reads and writes artifacts of ``kind`` (sets ``cls.KIND``).

    The class must provide ``classmethod load(path, ...)``. A kind in :data:`KIND_TABLE` must
    be registered by exactly the class the table names; a kind outside it (a plug-in) may be
    registered by any class, once.

    Raises:
        TypeError: the class has no ``load``, or the kind is taken by another class.
    """
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"an artifact kind must be an identifier-like string, got {kind!r}")

    def deco(cls: type[T]) -> type[T]:
        if not callable(getattr(cls, "load", None)):
            raise TypeError(f"{cls.__name__} needs a classmethod load(path) to be an artifact")
        where = _path_of(cls)
        if kind in KIND_TABLE and KIND_TABLE[kind] != where:
            raise TypeError(
                f"artifact kind {kind!r} belongs to {KIND_TABLE[kind]} in "
                f"steerlab.artifacts.KIND_TABLE, not to {where}; pick another kind name"
            )
        old = _REGISTRY.get(kind)
        if old is not None and _path_of(old) != where:
            raise TypeError(f"artifact kind {kind!r} is already registered by {_path_of(old)}")
        _REGISTRY[kind] = cls
        cls.KIND = kind  # type: ignore[attr-defined]
        return cls

    return deco


def kind_class(kind: str) -> type:
    """The class that loads artifacts of ``kind``, importing its module if needed.

    Raises:
        ValueError: an unknown kind (the message lists the known ones).
    """
    if kind not in _REGISTRY and kind in KIND_TABLE:
        module = KIND_TABLE[kind].partition(":")[0]
        importlib.import_module(module)  # its @register decorators fill the registry
        if kind not in _REGISTRY:
            raise RuntimeError(f"importing {module} did not register artifact kind {kind!r}")
    if kind not in _REGISTRY:
        known = sorted(set(KIND_TABLE) | set(_REGISTRY))
        raise ValueError(
            f"unknown artifact kind {kind!r}; known: {known}. A kind defined outside steerlab "
            "is known once the module that registers it has been imported."
        )
    return _REGISTRY[kind]


def check_json(value: Any, what: str = "meta") -> None:
    """Raise a ValueError naming ``what`` unless ``value`` is JSON-serialisable (it goes into
    ``cfg.json``, never into a pickle)."""
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from None


def tensors_name(kind: str) -> str:
    """File name of the tensors of an artifact of ``kind``."""
    return f"{kind}.safetensors"


def check_header(cfg: Any, where: str | os.PathLike) -> None:
    """Validate the header fields of a ``cfg.json`` (:data:`HEADER`), the schema every kind
    shares (:func:`steerlab.validation.check_fields`).

    Args:
        cfg: the parsed ``cfg.json``.
        where: the file, named in the error.

    Raises:
        FormatError: not a JSON object, a missing field, a field of the wrong type, a width
            below 1, or a ``format_version`` newer than this steerlab reads.
    """
    check_fields(cfg, HEADER, where, label="header field")
    require(bool(cfg["kind"]), where, "kind", "a non-empty string", cfg["kind"],
            label="header field")  # fmt: skip
    d_in = cfg["d_in"]
    require(d_in is None or d_in >= 1, where, "d_in", ">= 1", d_in, label="header field")
    if not 0 <= cfg["format_version"] <= FORMAT_VERSION:
        raise FormatError(where, f"format_version {cfg['format_version']} is not one this "
                                 f"steerlab ({__version__}) reads (0..{FORMAT_VERSION}); upgrade "
                                 "steerlab", field="format_version")  # fmt: skip


def _upgrade(cfg: Any, where: Path) -> Any:
    """Header of a format-0 file (written before the header existed), in memory."""
    if not isinstance(cfg, dict) or "format_version" in cfg:
        return cfg
    out = dict(cfg)
    if _LEGACY_WIDTH in out:
        width = out.pop(_LEGACY_WIDTH)
        if out.get("d_in", width) != width:
            raise FormatError(
                where, f"d_in={out['d_in']} and d_model={width} disagree", field="d_in"
            )
        out["d_in"] = width
    meta = out.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    out.setdefault("d_in", None)
    for key in ("site", "model_id"):
        if key not in out:
            value = meta.get(key)
            out[key] = value if isinstance(value, str) else None
    out.setdefault("tokenizer_hash", None)
    out["format_version"] = 0
    return out


def save_artifact(
    path: str | os.PathLike,
    kind: str,
    cfg: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    *,
    d_in: int | None,
    site: str | None = None,
    model_id: str | None = None,
    tokenizer_hash: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``cfg.json`` (header + ``cfg``) and ``<kind>.safetensors`` into ``path`` atomically.

    Args:
        path: target directory (created; replaced as a whole if it exists).
        kind: artifact kind, recorded in ``cfg.json``.
        cfg: the kind's JSON-serialisable configuration. A key that is also a header field
            must hold the same value.
        tensors: named tensors; they are made contiguous and moved to CPU (tensors sharing
            memory are copied, which safetensors requires).
        d_in: the activation width (None only for kinds without a single width).
        site: the site(s), comma-separated.
        model_id: the model.
        tokenizer_hash: the tokenizer fingerprint.
        overwrite: if False and ``path`` already holds files, raise instead of replacing them.

    Raises:
        ValueError: a header value of the wrong type, a key of ``cfg`` that contradicts the
            header, or a value that JSON cannot hold.
    """
    path = Path(path)
    header = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "d_in": d_in,
        "site": site,
        "model_id": model_id,
        "tokenizer_hash": tokenizer_hash,
        "steerlab_version": __version__,
    }
    check_header(header, f"{path / CFG_NAME} (being written)")
    for key, value in cfg.items():
        if key in header and value != header[key]:
            raise ValueError(f"{path / CFG_NAME}: cfg[{key!r}] = {value!r} contradicts the "
                             f"header's {key} = {header[key]!r}")  # fmt: skip
        check_json(value, f"cfg[{key!r}] of {kind}")
    full = {**cfg, **header}
    out: dict[str, Tensor] = {}
    storages: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        key = (str(t.device), t.untyped_storage().data_ptr())
        if key in storages:  # e.g. an orthogonal eraser's proj_right viewing proj_left
            t = t.clone()
        storages.add((str(t.device), t.untyped_storage().data_ptr()))
        out[name] = t
    text = json.dumps(full, indent=2, sort_keys=True)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / CFG_NAME).write_text(text)
        save_file(out, str(tmp / tensors_name(kind)))
    return path


def read_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``cfg.json`` of an artifact directory (older formats upgraded).

    Returns:
        The config as a :class:`~steerlab.validation.JsonObject`: reading a key it lacks
        raises a :class:`~steerlab.errors.FormatError` naming the file and the field.

    Raises:
        MissingFileError: no ``cfg.json`` in ``path`` (a ``FileNotFoundError`` too).
        FormatError: the file is not JSON, or its header fails :func:`check_header`.
    """
    path = Path(path)
    f = path / CFG_NAME
    if not f.is_file():
        raise MissingFileError(path, f"not a steerlab artifact: no {CFG_NAME} inside")
    cfg = read_json(f, "an artifact config (a JSON object)")
    if isinstance(cfg, dict) and "kind" not in cfg and "architecture" in cfg:
        raise FormatError(f, "no 'kind' but an 'architecture': a SAELens directory? Read it "
                             "with steerlab.saes.formats.load_saelens", field="kind")  # fmt: skip
    cfg = _upgrade(cfg, f)
    check_header(cfg, f)
    return json_view(cfg, f)


def load_artifact(
    path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read an artifact directory; check its kind if ``kind`` is given.

    Returns:
        ``(cfg, tensors)``: the checked ``cfg.json`` and the tensors on ``device`` (a
        :class:`~steerlab.validation.TensorDict`: reading a missing tensor names it).

    Raises:
        MissingFileError: no ``cfg.json`` or no ``<kind>.safetensors``.
        FormatError: either file is damaged, or the kind is not ``kind``.
    """
    path = Path(path)
    cfg = read_cfg(path)
    if kind is not None and cfg["kind"] != kind:
        raise FormatError(path / CFG_NAME, f"holds a {cfg['kind']!r} artifact, expected {kind!r}",
                          field="kind")  # fmt: skip
    tfile = path / tensors_name(cfg["kind"])
    if not tfile.is_file():
        raise MissingFileError(path, f"missing {tfile.name}")
    return cfg, load_tensors(tfile, device=str(device))


def load(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Load any artifact by the ``kind`` in its ``cfg.json`` (``kwargs`` go to its ``load``).

    Raises:
        FormatError: a damaged or unreadable artifact, or an unknown kind (named in the error).
    """
    cfg = read_cfg(path)
    try:
        cls = kind_class(cfg["kind"])
    except ValueError as e:
        raise FormatError(Path(path) / CFG_NAME, str(e), field="kind") from None
    return cls.load(path, **kwargs)


# --- the shared base of frozen artifacts ----------------------------------------------------------


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields ({} if they cannot be resolved)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation naming what only type checkers import: check nothing
        return {}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class FrozenArtifact:
    """``save``/``load`` for a frozen dataclass registered with :func:`register`.

    Fields holding tensors go to ``<kind>.safetensors`` under the field name; every other field
    goes to ``cfg.json`` under its name (through :attr:`CODECS` where JSON cannot hold the value
    as it is). Loading passes each field back to the constructor (a field found in neither file
    takes its default), so ``__post_init__`` validates a loaded artifact like a new one, and
    checks the header's ``d_in`` against the tensors.

    Subclasses provide ``d_model`` (the width) and may override :meth:`artifact_header`.
    """

    KIND: ClassVar[str]
    CODECS: ClassVar[dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]]] = {}
    """Field -> ``(to_json, from_json)`` for fields JSON cannot hold as they are."""

    @classmethod
    def _kind(cls) -> str:
        kind = getattr(cls, "KIND", None)
        if not kind:
            raise TypeError(
                f"{cls.__name__} is not a registered artifact kind; save one of its registered "
                "subclasses (or decorate it with @steerlab.artifacts.register)"
            )
        return kind

    def artifact_header(self) -> dict[str, Any]:
        """``d_in``, ``site``, ``model_id``, ``tokenizer_hash`` for the header (from ``meta``
        when it records them)."""
        meta = getattr(self, "meta", None) or {}
        return {
            "d_in": int(self.d_model),  # type: ignore[attr-defined]
            "site": _str_or_none(meta.get("site")),
            "model_id": _str_or_none(meta.get("model_id")),
            "tokenizer_hash": _str_or_none(meta.get("tokenizer_hash")),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``cfg.json`` and ``<kind>.safetensors`` into directory ``path`` (atomically)."""
        cfg: dict[str, Any] = {}
        tensors: dict[str, Tensor] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                tensors[f.name] = value
            else:
                codec = self.CODECS.get(f.name)
                cfg[f.name] = codec[0](value) if codec else value
        return save_artifact(path, self._kind(), cfg, tensors, **self.artifact_header())

    @classmethod
    def load(cls: type[T], path: str | os.PathLike, device: str | torch.device = "cpu") -> T:
        """Read an artifact written by :meth:`save` (of this class's kind)."""
        cfg, tensors = load_artifact(path, cls._kind(), device=device)  # type: ignore[attr-defined]
        where = Path(path) / CFG_NAME
        kwargs: dict[str, Any] = {}
        hints = _field_types(cls)
        # the fields' types are the schema of cfg.json; the class's own checks (__post_init__,
        # codecs) are the rest of it: whatever they refuse becomes a FormatError naming the file
        with reading(path, cls.__name__):
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                if f.name in tensors:
                    kwargs[f.name] = tensors[f.name]
                elif f.name in cfg:
                    codec = cls.CODECS.get(f.name)  # type: ignore[attr-defined]
                    value = cfg[f.name]
                    known = codec is None and f.name in hints
                    if known and json_matches(value, hints[f.name]) is False:
                        raise FormatError(where, f"field {f.name!r} must be "
                                          f"{hints[f.name]}, got {show(value)}", field=f.name)  # fmt: skip
                    kwargs[f.name] = codec[1](value) if codec else value
                elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise FormatError(path, f"{cls.__name__} needs {f.name!r}, found neither in "
                                      f"{CFG_NAME} nor in {tensors_name(cfg['kind'])}",
                                      field=f.name)  # fmt: skip
            obj = cls(**kwargs)
            width = obj.artifact_header()["d_in"]  # type: ignore[attr-defined]
        if cfg["d_in"] is not None and width != cfg["d_in"]:
            raise FormatError(where, f"d_in is {cfg['d_in']}, but the tensors have width {width}",
                              field="d_in")  # fmt: skip
        return obj
