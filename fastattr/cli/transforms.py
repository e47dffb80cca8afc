"""The audit's input transforms: resizing, centre cropping and channel
conversion of the data, and normalization as the model's first layer.

Design decision: the audited inputs stay in pixel units, ``[0, 1]``. Resizing,
cropping and channel conversion change the data (:func:`resized`,
:func:`converted_channels`); normalization ``(x - mean) / std`` does not: it
becomes the first layer of the audited model (:class:`Normalized`, built by
:func:`with_normalization`). So perturbation radii, attack epsilons and
heatmaps are all in pixel units, as RobustBench reports them, and every
explanation is of the pixels a person sees. For LRP the normalization is an
elementwise affine map that passes relevance through unchanged
(:class:`Standardize` carries ``IdentityRule``): the relevance at the pixels
equals the relevance at the normalized input.

Resizing follows torchvision's eval transforms (``Resize`` then
``CenterCrop``) on float images: ``torch.nn.functional.interpolate`` with
antialiasing, torchvision's output-size and crop-anchor rounding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..attr.lrp_rules import IdentityRule
from .config import AuditError

Size = Tuple[int, int]  # (height, width)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# ITU-R 601-2 luma, PIL's RGB -> "L" weights.
LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class InputTransform:
    """What is done to each input before the audit sees it, and the
    normalization the audited model starts with.

    resize: None; ``S`` (an int): the shorter side scaled to ``S``, then a
        centre crop to ``crop`` or, without one, ``S x S`` (torchvision's
        ``Resize(S)`` + ``CenterCrop``); or an exact ``(H, W)``.
    crop: a centre crop ``(H, W)`` after resizing.
    channels: None (the data's own), 1 or 3.
    mean, std: None or one value per channel (or one for all); applied
        inside the model (:func:`with_normalization`), not to the data:
        the audited inputs stay in pixel units ``[0, 1]``.
    interpolation: one of :data:`INTERPOLATIONS` (antialiased, except nearest).
    source: the torchvision weights the transform was read from, if any.
    """

    resize: Union[None, int, Size] = None
    crop: Optional[Size] = None
    channels: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    interpolation: str = "bilinear"
    source: Optional[str] = None

    def __post_init__(self) -> None:
        _check_size(self.resize, "--resize", allow_int=True)
        _check_size(self.crop, "--crop", allow_int=False)
        if self.channels not in (None, 1, 3):
            raise AuditError(f"--channels: expected 1 or 3, got {self.channels!r}")
        _check_values(self.mean, "--mean", positive=False)
        _check_values(self.std, "--std", positive=True)
        for values, option in ((self.mean, "--mean"), (self.std, "--std")):
            if values is not None and self.channels is not None and len(values) not in (1, self.channels):
                raise AuditError(f"{option}: expected 1 or {self.channels} values for --channels "
                                 f"{self.channels}, got {len(values)}")
        if self.interpolation not in INTERPOLATIONS:
            raise AuditError(f"--transforms: interpolation {self.interpolation!r} is not supported; "
                             f"expected one of {', '.join(INTERPOLATIONS)}")
        if isinstance(self.resize, int) and self.crop is not None and max(self.crop) > self.resize:
            raise AuditError(f"--crop: {self.crop[0]}x{self.crop[1]} is larger than the --resize {self.resize} "
                             f"shorter side")
        if isinstance(self.resize, tuple) and self.crop is not None and \
                (self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1]):
            raise AuditError(f"--crop: {self.crop[0]}x{self.crop[1]} is larger than the --resize "
                             f"{self.resize[0]}x{self.resize[1]}")

    @property
    def normalizes(self) -> bool:
        """Whether the model gets a normalization layer."""
        return self.mean is not None or self.std is not None

    def describe(self) -> str:
        """A readable record of the transform (it goes into the data set's description)."""
        parts = []
        if isinstance(self.resize, int):
            parts.append(f"shorter side resized to {self.resize} ({self.interpolation})")
        elif self.resize is not None:
            parts.append(f"resized to {self.resize[0]}x{self.resize[1]} ({self.interpolation})")
        crop = self.crop or ((self.resize, self.resize) if isinstance(self.resize, int) else None)
        if crop is not None:
            parts.append(f"centre crop {crop[0]}x{crop[1]}")
        if self.channels is not None:
            parts.append(f"{self.channels} channel{'s' if self.channels > 1 else ''}")
        if self.normalizes:
            parts.append(f"model input normalized with mean {list(self.mean or (0.0,))} "
                         f"std {list(self.std or (1.0,))}")
        if self.source:
            parts.append(f"from {self.source}")
        return ", ".join(parts) or "none"


def _check_size(size: Any, option: str, allow_int: bool) -> None:
    if size is None:
        return
    if allow_int and isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise AuditError(f"{option}: expected a size > 0, got {size}")
        return
    if not (isinstance(size, tuple) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        expected = "S (shorter side) or HxW" if allow_int else "HxW"
        raise AuditError(f"{option}: expected {expected} with sizes > 0, got {size!r}")


def _check_values(values: Optional[Tuple[float, ...]], option: str, positive: bool) -> None:
    if values is None:
        return
    if not isinstance(values, tuple) or not values or \
            not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise AuditError(f"{option}: expected one or more finite numbers, got {values!r}")
    if positive and min(values) <= 0:
        raise AuditError(f"{option}: every value must be > 0, got {list(values)}")


# ---------------------------------------------------------------------------
# From the command line
# ---------------------------------------------------------------------------


def transform_from_options(resize: Union[None, int, Sequence[int]] = None,
                           crop: Union[None, int, Sequence[int]] = None, channels: Optional[int] = None,
                           mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                           weights: Optional[str] = None) -> Optional[InputTransform]:
    """The transform of the command line: ``--transforms`` (torchvision
    weights) if given, with each explicitly given option replacing its
    value; None when nothing was asked for. Sizes: ``S`` or ``(S,)`` (a
    shorter side; a square crop), or ``(H, W)``."""
    given: Dict[str, Any] = {}
    if resize is not None:
        given["resize"] = _as_size(resize, square=False)
    if crop is not None:
        given["crop"] = _as_size(crop, square=True)
    if channels is not None:
        given["channels"] = channels
    if mean is not None:
        given["mean"] = tuple(mean)
    if std is not None:
        given["std"] = tuple(std)
    if weights is None:
        return InputTransform(**given) if given else None
    if "resize" in given and "crop" not in given:
        given["crop"] = None  # a new resize decides its own crop (S x S, or none for HxW)
    return dataclasses.replace(transform_from_weights(weights), **given)


def _as_size(size: Union[int, Sequence[int]], square: bool) -> Union[int, Size]:
    """``S`` / ``(S,)`` -> ``S`` (or ``(S, S)`` when ``square``); ``(H, W)`` as a tuple."""
    values = (size,) if isinstance(size, int) else tuple(size)
    if len(values) == 1:
        return (values[0], values[0]) if square else values[0]
    return values  # InputTransform checks the rest


# ---------------------------------------------------------------------------
# torchvision weights
# ---------------------------------------------------------------------------

_NAME_FORM = ("expected a torchvision weights name such as ResNet18_Weights.IMAGENET1K_V1 or "
              "ResNet18_Weights.DEFAULT (the enum names of torchvision.models, <Model>_Weights.<NAME>)")


def transform_from_weights(name: str) -> InputTransform:
    """The eval transform of torchvision weights ``name`` (e.g.
    ``"ResNet18_Weights.IMAGENET1K_V1"``, ``"ResNet18_Weights.DEFAULT"``):
    resize size, crop size, mean, std and interpolation read from
    ``weights.transforms()``, 3 channels. Nothing is downloaded (only the
    transform's settings are read, never the weights' state)."""
    try:
        from torchvision.models import get_weight
    except ImportError:
        raise AuditError("--transforms: needs torchvision (pip install torchvision)") from None
    if not isinstance(name, str) or name.count(".") != 1:
        raise AuditError(f"--transforms: {_NAME_FORM}; got {name!r}")
    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise AuditError(f"--transforms: unknown weights {name!r}; {_NAME_FORM}") from None
    preset = weights.transforms()
    settings = [getattr(preset, a, None) for a in ("resize_size", "crop_size", "mean", "std", "interpolation")]
    if any(s is None for s in settings):
        raise AuditError(f"--transforms: {name} is not an image-classification preset "
                         f"({type(preset).__name__}); give --resize/--crop/--mean/--std instead")
    resize, crop, mean, std, interpolation = settings
    mode = interpolation.value
    if mode not in INTERPOLATIONS:
        raise AuditError(f"--transforms: {name} resizes with {mode!r}; supported: {', '.join(INTERPOLATIONS)}")
    return InputTransform(
        resize=resize[0] if len(resize) == 1 else (resize[0], resize[1]),
        crop=(crop[0], crop[0]) if len(crop) == 1 else (crop[0], crop[1]),
        channels=3, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        interpolation=mode, source=name,
    )


# ---------------------------------------------------------------------------
# Applied to the data
# ---------------------------------------------------------------------------


def resized_size(height: int, width: int, resize: Union[int, Size]) -> Size:
    """The size after ``resize`` (torchvision's rule for a shorter side:
    the longer side ``int(S * long / short)``)."""
    if not isinstance(resize, int):
        return resize
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)


def final_crop(transform: InputTransform) -> Optional[Size]:
    """The centre crop after resizing: ``crop``, or ``S x S`` for a shorter side ``S``."""
    if transform.crop is not None:
        return transform.crop
    return (transform.resize, transform.resize) if isinstance(transform.resize, int) else None


def resized(x: Tensor, transform: InputTransform) -> Tensor:
    """``x`` float ``[n, C, H, W]`` resized and centre cropped as ``transform``
    says (a new tensor or ``x`` itself when nothing changes); values clamped
    to ``[0, 1]`` after bicubic interpolation (it overshoots), as an image
    decoded after resizing would be. A crop larger than the image is an
    AuditError naming ``--crop``."""
    if transform.resize is not None:
        x = _interpolated(x, resized_size(x.shape[-2], x.shape[-1], transform.resize), transform.interpolation)
    crop = final_crop(transform)
    if crop is None:
        return x
    height, width = x.shape[-2:]
    if crop[0] > height or crop[1] > width:
        raise AuditError(f"--crop: {crop[0]}x{crop[1]} is larger than the image, {height}x{width} "
                         f"(give --resize)")
    top = int(round((height - crop[0]) / 2.0))  # torchvision's crop anchor
    left = int(round((width - crop[1]) / 2.0))
    return x[..., top:top + crop[0], left:left + crop[1]]


def _interpolated(x: Tensor, size: Size, mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x  # torchvision returns the image itself
    smooth = mode != "nearest"
    out = nn.functional.interpolate(x, size=list(size), mode=mode, align_corners=False if smooth else None,
                                    antialias=smooth)
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out


def converted_channels(x: Tensor, channels: int, source: str) -> Tensor:
    """``x`` float ``[n, C, ...]`` with ``channels`` channels: unchanged,
    1 -> 3 by repetition, 3 -> 1 by ITU-R 601-2 luma (PIL's "L" weights);
    any other change is an AuditError naming ``--channels``."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, *x.shape[2:]).contiguous()
    if have == 3 and channels == 1:
        weights = x.new_tensor(LUMA).reshape(1, 3, *([1] * (x.dim() - 2)))
        return (x * weights).sum(1, keepdim=True)
    raise AuditError(f"--channels: {source} has {have} channels; only 1 -> 3 and 3 -> 1 can be converted, "
                     f"not {have} -> {channels}")


def check_normalization_fits(transform: InputTransform, n_channels: int, source: str) -> None:
    """``mean`` / ``std`` have 1 or ``n_channels`` values (the data's channels)."""
    for values, option in ((transform.mean, "--mean"), (transform.std, "--std")):
        if values is not None and len(values) not in (1, n_channels):
            raise AuditError(f"{option}: {len(values)} values, but {source} has {n_channels} channel(s); "
                             f"expected 1 or {n_channels} (or --channels {len(values)})")


# ---------------------------------------------------------------------------
# Normalization: the model's first layer
# ---------------------------------------------------------------------------


class Standardize(nn.Module):
    """``(x - mean) / std`` over dimension 1 of ``x`` ``[n, C, ...]``
    (``mean``/``std`` buffers ``[C]`` or ``[1]``). An elementwise affine map:
    LRP passes relevance through it unchanged (``rule``)."""

    rule = IdentityRule()

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return (x - self.mean.to(x.dtype).reshape(shape)) / self.std.to(x.dtype).reshape(shape)


class Normalized(nn.Module):
    """``model(standardize(x))``: the user's model (kept as the child
    ``model``, unchanged: its parameters and module names stay reachable
    under ``model.``) after the normalization layer ``standardize``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.standardize = Standardize(mean, std)
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return self.model(self.standardize(x))


def with_normalization(model: nn.Module, transform: Optional[InputTransform]) -> nn.Module:
    """``model`` itself when ``transform`` has no mean/std, else
    ``Normalized(model, mean, std)`` (missing mean: 0, missing std: 1).
    Works for TorchScript and ``torch.export`` modules too (they are children)."""
    if transform is None or not transform.normalizes:
        return model
    normalized = Normalized(model, transform.mean or (0.0,), transform.std or (1.0,))
    # The wrapper's mode mirrors the model's, set without .train(): that
    # would recurse into the model (an exported program refuses it).
    normalized.training = normalized.standardize.training = model.training
    return normalized
