"""PyTorch adapters: nn.Module (timm-style or arbitrary), TorchScript, state dict + factory, pickled checkpoints.

The feature vector is taken from timm's ``forward_head(forward_features(x), pre_logits=True)`` when the model has
it, otherwise captured with a forward pre-hook on the final ``nn.Linear`` (found automatically: the linear layer
whose output is the model's output on a probe batch, last registered first, or named by ``head``).
TorchScript modules take no hooks: they are split on their graph, at its last linear op (``aten::linear`` /
``aten::addmm``, a 1x1 convolution for a segmentation model; :mod:`histoscale.models._torch_script`).

Segmentation models (output (N, C, H, W)): the head is the ``nn.Conv2d`` with a 1x1 kernel, stride 1 and C outputs
whose output is the model's output, possibly through a sigmoid or softmax (found automatically, last registered
first), or the 1x1 convolution named by ``head``, whose own output is then the logits whatever follows it (an
upsampling, say); forward hooks capture its input and output maps, averaged over cells on the device
(:func:`~histoscale.models.contract.pool_cells`' rule, which is ``adaptive_avg_pool2d``'s).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histoscale.errors import ConfigError, ModelError
from histoscale.models._batchnorm import batchnorm_layers, batchnorm_moments, running_statistics
from histoscale.models._torch_dense import dense_fns, find_dense_head, gives_output, not_the_output, pool_maps
from histoscale.models._torch_script import split_script
from histoscale.models.card import ModelCard
from histoscale.models.contract import (
    DENSE_CELLS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    SplitModel,
    check_split,
    default_batch_size,
    import_callable,
    probe_batch,
    probe_failure,
    resolve_class_names,
)
from histoscale.models.onnx_adapter import embed_card
from histoscale.models.registry import LoadRequest, ModelFormat, register_format
from histoscale.patches import WHOLE_FACTOR_TAPS, Region, is_whole_factor

__all__ = ["TorchSplitModel", "bf16_supported", "build_torch", "export_onnx", "load_torch_file"]

logger = logging.getLogger(__name__)


def bf16_supported(device: str | torch.device) -> bool:
    """Whether bf16 matmuls are accelerated on ``device``: CUDA with bf16, or x86 CPUs with AMX/AVX512-BF16.

    Emulated bf16 is two orders of magnitude slower than fp32 on other CPUs, hence the strict check.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device if device else ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16"]:
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "auto":
        # CPUs stay fp32 even with avx512_bf16: autocast measured slower there (SmallCNN 766 vs 922 patches/s)
        return "bf16" if device.type == "cuda" and bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        logger.warning("bf16 asked on %s without bf16 hardware support: expect it to be much slower than fp32", device)
    return precision  # type: ignore[return-value]


def _filter_alike(images: torch.Tensor) -> torch.Tensor:
    """:func:`histoscale.patches.filter_alike` on the device: (n, 3, h, w) float, the same taps, edges reflected."""
    taps = torch.tensor(WHOLE_FACTOR_TAPS, dtype=images.dtype, device=images.device)
    x = F.pad(images, (1, 1, 1, 1), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, 3).expand(3, 1, 1, 3), groups=3)
    return F.conv2d(x, taps.view(1, 1, 3, 1).expand(3, 1, 3, 1), groups=3)


class TorchSplitModel(SplitModel):
    """A torch module (or TorchScript module) with a feature function ``phi(x) -> (N, M)`` (or (N, G, M)) and the
    function giving the head's output, ``forward`` (the module itself unless given)."""

    def __init__(
        self,
        module: nn.Module,
        phi: Callable[[torch.Tensor], torch.Tensor],
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.module = module
        self._phi = phi
        self._forward = module if forward is None else forward
        self._torch_device = torch.device(self.device)
        scale, offset = self.preprocessing.scale_offset()
        self._scale = torch.from_numpy(scale).view(1, 3, 1, 1).to(self._torch_device)
        self._offset = torch.from_numpy(offset).view(1, 3, 1, 1).to(self._torch_device)
        # On a GPU the model would wait for CPU resampling: resample there, from the reads (uint8 transfers).
        self._on_device = self._torch_device.type == "cuda" and self.preprocessing.function is None

    @property
    def resamples_on_device(self) -> bool:
        """True (the default on CUDA) when the search hands this model its reads and the patches are cropped and
        resampled on the model's device by :meth:`features_of_regions`: antialiased bilinear interpolation, close
        to but not the same pixels as the CPU's area averaging. Set False for CPU resampling (the same patches as
        a CPU run); True needs the model's preprocessing to be mean/std (no preprocessing function)."""
        return self._on_device

    @resamples_on_device.setter
    def resamples_on_device(self, value: bool) -> None:
        if value and self.preprocessing.function is not None:
            raise ConfigError(
                f"model {self.name!r} has a preprocessing function, which runs on the CPU: it cannot resample on its "
                "device (leave resamples_on_device False)"
            )
        self._on_device = bool(value)

    def features_of_regions(self, regions: Sequence[Region]) -> np.ndarray:
        """Phi of the patches cropped from ``regions``; on the model's device when :attr:`resamples_on_device`:
        each read crosses once as uint8 (pinned memory on CUDA), and the crops of one size (one scale, across
        points) are resized there in one call, with antialiased bilinear interpolation, rounded to uint8 values as
        a CPU patch would be; crops at a whole factor are filtered alike first, as on the CPU
        (:func:`histoscale.patches.filter_alike`)."""
        if not self._on_device:
            return super().features_of_regions(regions)
        size = self.input_size
        by_side: dict[int, tuple[list[int], list[torch.Tensor]]] = {}  # crops of one side are resized in one call
        n = 0
        with torch.inference_mode():
            for region in regions:
                pixels = torch.from_numpy(np.require(region.pixels, requirements=("C", "W")))
                if self._torch_device.type == "cuda":
                    pixels = pixels.pin_memory()
                image = pixels.to(self._torch_device, non_blocking=True).permute(2, 0, 1)[None]
                for left, top, side in region.boxes.tolist():
                    where, crops = by_side.setdefault(side, ([], []))
                    where.append(n)
                    crops.append(image[:, :, top : top + side, left : left + side])
                    n += 1
            batch = torch.empty((n, 3, size, size), device=self._torch_device)
            for side, (where, crops) in by_side.items():
                same = torch.cat(crops).float()
                if is_whole_factor(side, size):
                    same = _filter_alike(same)
                if side != size:
                    same = F.interpolate(same, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                batch[where] = same.round_().clamp_(0, 255)  # the values a uint8 patch would hold
            batch = batch.mul_(self._scale).sub_(self._offset).contiguous(memory_format=torch.channels_last)
            out = []
            for start in range(0, len(batch), self.batch_size):
                with torch.autocast(self._torch_device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    part = self._phi(batch[start : start + self.batch_size])
                out.append(self._finite(part.float().cpu().numpy(), start, "features"))
        return np.concatenate(out)

    @property
    def has_batchnorm(self) -> bool:
        """True when the module has BatchNorm layers with running statistics and is a classifier (the
        ``bn-stats`` scorer's drift is one number per patch)."""
        return self.cells is None and bool(batchnorm_layers(self.module))

    def batchnorm_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The running mean, variance and layer index (K,) of the BatchNorm channels the ``bn-stats`` scorer
        keeps (:func:`histoscale.models._batchnorm.running_statistics`)."""
        if not self.has_batchnorm:
            return super().batchnorm_statistics()
        return running_statistics(self.module)

    def features_with_moments(self, batch: np.ndarray) -> np.ndarray:
        """Phi (N, M) and, from the same forward pass, each patch's BatchNorm input moments (N, 2K): (N, M + 2K)."""
        if not self.has_batchnorm:
            return super().features_with_moments(batch)
        try:
            with batchnorm_moments(self.module) as chunks:
                feats = self.features(batch)
        except ValueError as err:  # the feature function skips part of the network
            raise ModelError(f"model {self.name!r}: {err}; the bn-stats scorer needs the whole network: use "
                             "--scorer margin") from None
        moments = np.concatenate(chunks) if chunks else np.zeros((0, 2 * len(self.batchnorm_statistics()[0])))
        return np.concatenate([feats, moments.astype(np.float32)], axis=1)

    def _to_input(self, chunk: np.ndarray) -> torch.Tensor:
        if self.preprocessing.function is not None:
            return torch.from_numpy(self.preprocessing.to_nchw(chunk)).to(self._torch_device)
        # NHWC uint8 permuted to NCHW is already channels_last in memory: no copy before the first conv.
        x = torch.from_numpy(np.require(chunk, requirements=("C", "W")))  # read-only input: copy, not warn
        x = x.to(self._torch_device, non_blocking=True).permute(0, 3, 1, 2)
        return x.float().mul_(self._scale).sub_(self._offset)

    def _call(self, fn: Callable[[torch.Tensor], torch.Tensor], chunk: np.ndarray) -> np.ndarray:
        with (
            torch.inference_mode(),
            torch.autocast(self._torch_device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"),
        ):
            out = fn(self._to_input(chunk))
        return out.float().cpu().numpy()

    def _features_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._call(self._phi, chunk)

    def _forward_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._call(self._forward, chunk)



def _timm_features(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Phi of a timm-style model: the pooled features that enter its classifier."""

    def phi(x: torch.Tensor) -> torch.Tensor:
        return module.forward_head(module.forward_features(x), pre_logits=True)

    return phi

def _linear_like(module: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight (C, M), bias (C,) or None) of a linear-like module, else None."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    bias = getattr(module, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def _wb(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    W = weight.detach().float().cpu().numpy().T.copy()
    b = np.zeros(W.shape[1], np.float32) if bias is None else bias.detach().float().cpu().numpy().reshape(-1)
    return W, b


def _check_rgb(module: nn.Module, where: str) -> None:
    """Refuse models whose first convolution does not take 3 channels (histoscale feeds RGB)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            if sub.in_channels != 3:
                raise ModelError(
                    f"{where}: the first convolution {name!r} expects {sub.in_channels} input channel(s), but "
                    "histoscale feeds RGB patches (3 channels); give a preprocess function turning uint8 RGB into "
                    "its input (preprocess= in Python, \"preprocess\" in the model card)"
                )
            return
        if isinstance(sub, torch.jit.ScriptModule):
            for pname, p in sub.named_parameters():
                if p.ndim == 4:
                    if p.shape[1] == 1:
                        raise ModelError(
                            f"{where}: the first convolution weight {pname!r} expects 1 input channel, but histoscale "
                            "feeds RGB patches (3 channels); use a model trained on RGB"
                        )
                    return
            return


def build_torch(
    module: nn.Module,
    *,
    where: str,
    name: str,
    head: str | None,
    pre: Preprocessing,
    device: torch.device,
    precision: str,
    batch_size: int,
    class_names: Sequence[str] | None,
    mpp: float | None,
    input_size_from: str,
    background: str | None = None,
) -> TorchSplitModel:
    """Split a torch module (eval mode and moved to ``device`` in place) and verify the split on a probe batch."""
    if pre.function is None:  # a preprocess function may feed other channels than RGB
        _check_rgb(module, where)
    scripted = isinstance(module, torch.jit.ScriptModule)
    module.eval()
    module.to(device)
    if not scripted and device.type != "mps":
        module.to(memory_format=torch.channels_last)  # faster convolutions with oneDNN / cuDNN
    common = dict(
        name=name, preprocessing=pre, mpp=mpp, device=str(device), precision="fp32", batch_size=batch_size, source=where
    )
    probe = probe_batch(pre.input_size)
    runner = TorchSplitModel(module, lambda x: x, W=np.zeros((1, 1)), b=np.zeros(1), class_names=["_"], **common)
    try:
        out = runner._forward_chunk(probe)
    except Exception as err:
        raise probe_failure(where, name, pre.input_size, err, f" RGB patches (input size from {input_size_from})") from err
    if isinstance(out, tuple) or out.ndim not in (2, 4):
        raise ModelError(
            f"{where}: model {name!r} returns shape {tuple(getattr(out, 'shape', ()))}, expected (N, C) class scores "
            "or (N, C, H, W) segmentation maps"
        )
    n_out = out.shape[1]

    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    cells = min(DENSE_CELLS, *out.shape[2:]) if out.ndim == 4 else None
    if scripted:
        phi, forward, W, b, head_name = _script_split(module, where, name, head, runner, probe, out, cells)
    elif cells is not None:
        head_mod = find_dense_head(module, where, name, head, runner._call, probe, out)
        phi, forward = dense_fns(module, head_mod, cells)
        W, b = _wb(head_mod.weight.flatten(1), head_mod.bias)  # (C, M, 1, 1) -> (C, M)
        head_name = next((n for n, m in module.named_modules() if m is head_mod), None)
    else:
        phi, head_mod = _find_split(module, where, name, head, n_out, runner, probe, out)
        W, b = _wb(*_linear_like(head_mod))  # type: ignore[misc]
        head_name = next((n for n, m in module.named_modules() if m is head_mod), None)
    names = resolve_class_names(class_names, W.shape[1], where)
    model = TorchSplitModel(
        module, phi, forward, W=W, b=b, class_names=names, cells=cells, background=background, head_name=head_name,
        **common,
    )
    if cells is not None or scripted:
        check_split(name, where, model._features_chunk(probe), W, b, model._forward_chunk(probe))
    model.precision = resolve_precision(precision, device)
    logger.info("loaded %r from %s: M=%d, C=%d, %s %s", name, where, W.shape[0], W.shape[1], device, model.precision)
    return model


def _find_split(
    module: nn.Module,
    where: str,
    name: str,
    head: str | None,
    n_out: int,
    runner: TorchSplitModel,
    probe: np.ndarray,
    out: np.ndarray,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Any]:
    """The feature function and the head module, verified against the probe output ``out``."""

    def verified(phi: Callable[[torch.Tensor], torch.Tensor], head_mod: Any) -> bool:
        feats = runner._call(phi, probe)
        check_split(name, where, feats, *_wb(*_linear_like(head_mod)), out)  # type: ignore[misc]
        return True

    # 1. timm's split, when present and no head was named: forward_head(forward_features(x), pre_logits=True).
    if head is None and all(hasattr(module, a) for a in ("forward_features", "forward_head", "get_classifier")):
        head_mod = module.get_classifier()
        lin = _linear_like(head_mod)
        if lin is not None and lin[0].shape[0] == n_out:

            phi_timm = _timm_features(module)
            try:
                verified(phi_timm, head_mod)
                return phi_timm, head_mod
            except ModelError as err:
                logger.info("timm-style split of %r not usable (%s); looking for the head by hooks", name, err)
            except Exception as err:  # a forward_head without pre_logits etc.
                logger.info("timm-style split of %r failed (%s); looking for the head by hooks", name, err)

    # 2. The named head, or every linear module whose width matches the output.
    if head is not None:
        try:
            head_mod = module.get_submodule(head)
        except AttributeError as err:
            names = [n for n, m in module.named_modules() if _linear_like(m) is not None]
            raise ModelError(f"{where}: model {name!r} has no submodule {head!r}; linear layers: {names}") from err
        if _linear_like(head_mod) is None:
            raise ModelError(f"{where}: head {head!r} of {name!r} is a {type(head_mod).__name__}, not a linear layer")
        candidates = [(head, head_mod)]
    else:
        candidates = [
            (n, m)
            for n, m in module.named_modules()
            if (lin := _linear_like(m)) is not None and lin[0].shape[0] == n_out
        ]
    if not candidates:
        raise ModelError(
            f"{where}: no final linear layer found in {name!r}: no nn.Linear with {n_out} outputs (the model's output "
            "width); histoscale needs a classifier ending in one linear layer on pooled features (pass head=... to "
            "name it)"
        )
    # Forward pre-hooks capture the head's input whatever precedes it (flatten, dropout, custom code).
    captured: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, args, n=n: captured.__setitem__(n, args[0])) for n, m in candidates
    ]
    try:
        runner._call(module, probe)
    finally:
        for h in handles:
            h.remove()
    errors: list[str] = []
    # Prefer the last registered candidate, as the final head usually is.
    for n, m in reversed(candidates):
        if n not in captured:
            errors.append(f"{where}: linear layer {n!r} of {name!r} is never called by its forward()")
            continue
        try:
            check_split(name, where, captured[n].float().cpu().numpy(), *_wb(*_linear_like(m)), out)  # type: ignore[misc]
        except ModelError as err:
            errors.append(str(err))
            continue
        return _hook_phi(module, m), m
    if len(errors) == 1:
        raise ModelError(errors[0])
    raise ModelError(f"{where}: none of the linear layers of {name!r} produces its output: " + "; ".join(errors))


def _hook_phi(module: nn.Module, head_mod: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def phi(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = head_mod.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            module(x)
        finally:
            handle.remove()
        return captured[-1]  # the last call, should the head be shared

    return phi


def _script_split(
    module: Any, where: str, name: str, head: str | None, runner: TorchSplitModel, probe: np.ndarray,
    out: np.ndarray, cells: int | None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor] | None, np.ndarray,
           np.ndarray, str | None]:
    """(phi, forward, W, b, head name) of a TorchScript module, split on its graph's last linear op
    (:func:`~histoscale.models._torch_script.split_script`). ``forward``: None (the module) for a classifier; for a
    segmentation model the head's own output pooled per cell (the model's output must be it, through a sigmoid or
    softmax, unless the head is named)."""
    split = split_script(module, where, name, head, dense=cells is not None)
    if cells is None:
        return (lambda x: split.maps(x)[0]), None, *_wb(split.weight, split.bias), split.name
    if head is None and not gives_output(torch.from_numpy(runner._call(lambda x: split.maps(x)[1], probe)), out):
        raise not_the_output(where, name, [split.name or split.op])
    return (
        lambda x: pool_maps(split.maps(x)[0], cells),
        lambda x: pool_maps(split.maps(x)[1], cells),
        *_wb(split.weight.flatten(1), split.bias),
        split.name,
    )


def _resolve_factory(factory: str | Callable[..., nn.Module], where: str) -> Callable[..., nn.Module]:
    try:
        return import_callable(factory, "factory")
    except ModelError as err:
        raise ModelError(f"{where}: {err}") from err


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.endswith("constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside a checkpoint dict (common wrapper keys, 'module.' prefixes), else None."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state_dict(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd = dict(obj)
            if all(k.startswith("module.") for k in sd):  # saved from DataParallel
                sd = {k[len("module.") :]: v for k, v in sd.items()}
            return sd
    return None


def load_torch_file(
    path: Path,
    *,
    fmt: str | None,
    factory: str | Callable[..., nn.Module] | None,
    factory_kwargs: Mapping[str, Any],
    allow_pickle: bool,
) -> nn.Module:
    """A module from a TorchScript, state dict (+ factory), safetensors or pickled checkpoint file."""
    where = str(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise ModelError(f"model file {path} is empty (0 bytes): an interrupted save or copy? re-save or re-copy it")
    if fmt == "torchscript" or (fmt is None and _is_torchscript(path)):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ModelError(
                f"file {path} is not a valid TorchScript model: {err}; re-export it (torch.jit.script/save)"
            ) from err
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ModelError(
                f"{where}: reading .safetensors needs the safetensors package: pip install safetensors"
            ) from err
        obj: Any = load_file(str(path))
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if not allow_pickle:
                raise ModelError(
                    f"{where} is a pickled checkpoint that can only be loaded by running code stored in the file "
                    "(a security risk with files you did not create). Prefer a state dict with "
                    "factory='module:callable', TorchScript or ONNX; if you trust the file, pass allow_pickle=True "
                    "(--allow-pickle)"
                ) from err
            logger.warning("loading %s with pickle (allow_pickle=True): this runs code stored in the file", path)
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=False)
            except Exception as err2:
                raise ModelError(f"file {path} could not be unpickled: {err2}; re-save it") from err2
        except Exception as err:
            raise ModelError(
                f"file {path} is not a valid PyTorch file (truncated or corrupt?): {err}; re-save it"
            ) from err
    if isinstance(obj, nn.Module):
        return obj
    state_dict = _unwrap_state_dict(obj)
    if state_dict is None:
        raise ModelError(f"{where} holds a {type(obj).__name__}, neither a module nor a state dict of tensors")
    if factory is None:
        raise ModelError(
            f"{where} is a state dict (weights only): pass factory='module:callable' (or a card with 'factory') that "
            "builds the architecture, e.g. factory='histoscale.architectures:SmallCNN'"
        )
    try:
        module = _resolve_factory(factory, where)(**dict(factory_kwargs))
    except TypeError as err:
        raise ModelError(
            f"{where}: the factory {factory!r} cannot be called with {dict(factory_kwargs)} (from the card or "
            f"config): {err}; name a factory that takes these keywords"
        ) from err
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ModelError(f"{where}: weights do not fit the architecture built by {factory!r}: {err}") from err
    return module


def _claims(request: LoadRequest) -> bool:
    return isinstance(request.spec, (str, os.PathLike, nn.Module))


def _load(request: LoadRequest) -> TorchSplitModel:
    """Build the module from a file (TorchScript, state dict + factory, opt-in pickle) or take it as given."""
    spec, name = request.spec, request.name
    input_size, mean, std = request.input_size, request.mean, request.std
    if isinstance(spec, (str, os.PathLike)):
        # A card saying "torch-pickle" does not grant pickle permission: only the caller's allow_pickle does.
        module = load_torch_file(
            Path(spec),
            fmt=request.fmt if request.fmt in ("torchscript",) else None,
            factory=request.factory,
            factory_kwargs=request.factory_kwargs,
            allow_pickle=request.allow_pickle,
        )
    elif isinstance(spec, nn.Module):
        module = spec
    else:
        raise ModelError(f"cannot load a model from {type(spec).__name__}: give a path, an nn.Module or a model card")

    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    if not isinstance(cfg, Mapping):
        cfg = {}
    sources = dict(request.sources)
    if input_size is None and "input_size" in cfg:
        sources["input_size"] = "the module's pretrained_cfg"
    if mean is None and std is None and request.preprocess is None and "mean" in cfg and "std" in cfg:
        sources["preprocessing"] = "the module's pretrained_cfg"
    size_from = sources.get("input_size", "the default 224")
    if input_size is None:
        input_size = int(cfg["input_size"][-1]) if "input_size" in cfg else 224
    pre = Preprocessing(
        int(input_size),
        tuple(mean if mean is not None else cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        tuple(std if std is not None else cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        request.preprocess,
    )
    if isinstance(module, torch.jit.ScriptModule) and name == "RecursiveScriptModule":
        name = getattr(module, "original_name", name)
    dev = resolve_device(request.device)
    model = build_torch(
        module, where=request.where, name=name, head=request.head, pre=pre, device=dev,
        precision=request.precision, batch_size=request.batch_size or default_batch_size(dev.type),
        class_names=request.class_names, mpp=request.mpp, input_size_from=size_from, background=request.background,
    )
    model.sources.update(sources)
    model.card, model.format = request.card, _kind(module, spec, request.factory)
    return model


def _kind(module: nn.Module, spec: Any, factory: Any) -> str:
    """What the torch model was read from, for provenance."""
    if isinstance(module, torch.jit.ScriptModule):
        return "torchscript"
    if not isinstance(spec, (str, os.PathLike)):
        return "torch nn.Module"
    if Path(spec).suffix.lower() == ".safetensors":
        return "torch safetensors state dict + factory"
    return "torch state dict + factory" if factory is not None else "torch pickle (allow_pickle)"


register_format(ModelFormat("torch", _claims, _load, fallback=True))


def export_onnx(
    module: Any, path: str | os.PathLike[str], input_size: int, channels: int = 3, *, card: ModelCard | None = None
) -> Path:
    """Export a torch classifier to ONNX the way the ONNX adapter reads it back: NCHW float input ``input`` of
    ``input_size`` px with ``channels`` channels (as the model expects its input), output ``logits``, any batch size.
    ``card`` (its input size, mean/std, class names, um/px, ...) is stored inside the file, so that the file alone
    describes the model (:func:`~histoscale.models.onnx_adapter.embed_card`). Returns ``path``."""
    import warnings

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, channels, input_size, input_size),),
            str(path),
            dynamo=False,  # the dynamo exporter needs onnxscript, which the project does not require
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    if card is not None:
        embed_card(path, dataclasses.replace(card, input_size=card.input_size or input_size))
    return path
