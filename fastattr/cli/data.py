"""The audited data set, in memory: inputs ``x`` float32 ``[N, *F]`` in pixel
units and integer labels ``y`` int64 ``[N]``, from scikit-learn's digits, an
``.npz`` or an image folder; an ``.npz`` may add ground-truth masks ``s``
(for the localisation metrics); resized, cropped and channel-converted by an
:class:`~fastattr.cli.transforms.InputTransform`; cut to a stratified,
seeded sample by ``--limit``; and a content hash that identifies it."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import AuditError
from .transforms import InputTransform, check_normalization_fits, converted_channels, resized

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [N, *F]
    y: np.ndarray  # int64 [N]
    description: str  # where the examples come from, the sample and the transform
    class_names: Tuple[str, ...]
    source_index: np.ndarray  # int64 [N]: each example's position in the whole data set
    names: Tuple[str, ...]  # an image folder's files, relative to it ([N]); () for arrays
    s: Optional[np.ndarray] = None  # bool [N, 1 or C, *S]: ground-truth masks, broadcastable to x

    def content_hash(self) -> str:
        """sha256 of the shapes and bytes of ``x`` and ``y`` (and ``s``, when there are masks)."""
        h = hashlib.sha256()
        for a in (self.x, self.y) if self.s is None else (self.x, self.y, self.s):
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def digits_split() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits scaled to [0, 1]: ``(x_train, y_train, x_test, y_test)``,
    x float32 ``[n, 1, 8, 8]``; every fifth example is held out."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing downloaded

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    held_out = np.arange(len(y)) % 5 == 0
    return x[~held_out], y[~held_out], x[held_out], y[held_out]


def _check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> Tuple[np.ndarray, np.ndarray]:
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif x.dtype.kind == "f":
        x = x.astype(np.float32)
    else:
        raise AuditError(f"--data: {source}: x must be floating point or uint8 images, got dtype {x.dtype}")
    if x.ndim < 2:
        raise AuditError(f"--data: {source}: x must be [N, ...] with at least 2 dimensions, got shape {x.shape}")
    if y.ndim != 1 or y.dtype.kind not in "iub":
        raise AuditError(f"--data: {source}: y must be a 1-D array of integer labels, got {y.dtype} {y.shape}")
    if len(y) != len(x):
        raise AuditError(f"--data: {source}: x has {len(x)} examples but y has {len(y)} labels")
    if len(x) == 0:
        raise AuditError(f"--data: {source}: no examples")
    if not np.isfinite(x).all():
        raise AuditError(f"--data: {source}: x has non-finite values")
    if (y < 0).any():
        raise AuditError(f"--data: {source}: labels must be >= 0, got {int(y.min())}")
    return np.ascontiguousarray(x), y.astype(np.int64)


def stratified_subset(y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of a seeded sample of ``limit`` of the labels ``y``
    ``[N]`` (all of them when ``limit >= N``), stratified by class.

    Per-class quotas are proportional to the class sizes by largest
    remainder; when ``limit`` is at least the number of classes ``K``, every
    class gets one and the other ``limit - K`` are apportioned to the
    classes' remaining sizes. Equal remainders are ordered by a seeded
    permutation of the classes; each class's examples are drawn without
    replacement, all from ``numpy.random.default_rng(seed)``."""
    n = len(y)
    if limit >= n:
        return np.arange(n, dtype=np.int64)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    tie_order = rng.permutation(len(counts))
    if limit >= len(counts):
        quotas = 1 + _largest_remainder(limit - len(counts), counts - 1, tie_order)
    else:
        quotas = _largest_remainder(limit, counts, tie_order)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    chosen = [rng.choice(m, q, replace=False) for m, q in zip(members, quotas)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _largest_remainder(total: int, sizes: np.ndarray, tie_order: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``sizes`` (int, sum > 0): the floors,
    then one more each for the largest remainders (ties: ``tie_order``)."""
    scaled = total * sizes.astype(np.int64)
    quotas, remainders = scaled // sizes.sum(), scaled % sizes.sum()  # integers: no float ties
    order = np.lexsort((tie_order, -remainders))
    quotas[order[:total - quotas.sum()]] += 1
    return quotas


def _sample_note(chosen: np.ndarray, n: int, seed: int) -> str:
    return "" if len(chosen) == n else f"; stratified sample of {len(chosen)} of {n} examples (seed {seed})"


def _transform_note(transform: Optional[InputTransform]) -> str:
    return "" if transform is None else f"; transform: {transform.describe()}"


def transformed_arrays(x: np.ndarray, transform: Optional[InputTransform], source: str) -> np.ndarray:
    """``x`` float32 ``[N, C, ...]`` with ``transform``'s channels, then its
    resize and crop (which need images ``[N, C, H, W]``); ``x`` itself
    when there is nothing to do."""
    if transform is None:
        return x
    original = t = torch.from_numpy(x)
    if transform.channels is not None:
        t = converted_channels(t, transform.channels, source)
    if transform.resize is not None or transform.crop is not None:
        if x.ndim != 4:
            raise AuditError(f"--resize/--crop: need images [N, C, H, W]; {source} has x shaped {list(x.shape)}")
        t = resized(t, transform)
    return x if t is original else np.ascontiguousarray(t.numpy())


MASK_SHAPES = "[N, H, W], [N, 1, H, W] or [N, C, H, W]"


def check_masks(s: np.ndarray, x: np.ndarray, source: str) -> np.ndarray:
    """The ground-truth masks ``s`` of inputs ``x`` ``[N, C, *S]`` as bool
    ``[N, 1 or C, *S]``: ``s`` is ``[N, *S]`` (one mask per example, every
    channel), ``[N, 1, *S]`` or ``[N, C, *S]`` (one per channel), of 0 / 1
    (or bool) values. Anything else is an AuditError naming ``--data``."""
    n, spatial = x.shape[0], x.shape[2:]
    shapes = {(n, *spatial), (n, 1, *spatial), tuple(x.shape)} if x.ndim >= 3 else {tuple(x.shape)}
    if tuple(s.shape) not in shapes:
        expected = MASK_SHAPES if x.ndim == 4 else " or ".join(str(list(t)) for t in sorted(shapes))
        raise AuditError(f"--data: {source}: masks s must be {expected} beside x {list(x.shape)}, "
                         f"got {list(s.shape)}")
    if s.dtype != np.bool_ and (s.dtype.kind not in "iuf" or not np.isin(s, (0, 1)).all()):
        raise AuditError(f"--data: {source}: masks s must hold only 0 / 1 (or True / False), got dtype {s.dtype}"
                         + ("" if s.dtype.kind not in "iuf" else " with other values"))
    s = s.astype(np.bool_)
    return np.ascontiguousarray(s[:, None] if s.ndim == x.ndim - 1 else s)


def transformed_masks(s: np.ndarray, transform: Optional[InputTransform], source: str) -> np.ndarray:
    """Masks bool ``[N, 1 or C, H, W]`` resized and cropped as the inputs are,
    with nearest-neighbour interpolation (so they stay 0 / 1); per-channel
    masks cannot follow a change of the number of channels (an AuditError)."""
    if transform is None:
        return s
    if transform.channels is not None and s.shape[1] not in (1, transform.channels):
        raise AuditError(f"--channels: {source}: masks s have one per channel ({s.shape[1]}); give one mask per "
                         f"example ({MASK_SHAPES.split(' or ')[0]}) to change the channels")
    if transform.resize is None and transform.crop is None:
        return s
    nearest = dataclasses.replace(transform, interpolation="nearest")
    return np.ascontiguousarray(resized(torch.from_numpy(s).to(torch.float32), nearest).numpy() > 0.5)


def load_npz(path: str) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``(x, y, s)`` of an ``.npz`` with ``x`` ``[N, ...]`` (float, or uint8
    scaled to [0, 1]), ``y`` ``[N]`` and optional masks ``s`` (:func:`check_masks`; None without)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise AuditError(f"--data: {path}: missing array(s) {missing}; has {f.files}")
            x, y = f["x"], f["y"]
            s = f["s"] if "s" in f.files else None
    except (OSError, ValueError) as e:
        raise AuditError(f"--data: {path}: not a readable .npz without pickled objects ({e})") from None
    x, y = _check_arrays(x, y, path)
    return x, y, None if s is None else check_masks(s, x, path)


def _array_dataset(x: np.ndarray, y: np.ndarray, description: str, class_names: Tuple[str, ...],
                   limit: Optional[int], seed: int, transform: Optional[InputTransform],
                   s: Optional[np.ndarray] = None) -> Dataset:
    """The sample of ``(x, y)`` (and masks ``s``) chosen by ``limit``, transformed."""
    chosen = stratified_subset(y, len(y) if limit is None else limit, seed)
    x = transformed_arrays(x[chosen], transform, description)
    if s is not None:
        s = transformed_masks(s[chosen], transform, description)
    return Dataset(x, y[chosen], description + _sample_note(chosen, len(y), seed) + _transform_note(transform),
                   class_names, chosen, (), s)


# PIL modes read as one channel. 16-bit ("I;16*", and "I" as PNG gives it in
# older Pillow) are scaled by 65535; "F" is taken as it is.
_GRAY_MODES = ("1", "L", "LA", "I", "F")


def _is_gray(mode: str) -> bool:
    return mode in _GRAY_MODES or mode.startswith("I;16")


def image_files(path: str) -> Tuple[Tuple[str, ...], List[str], np.ndarray]:
    """``(classes, files, labels)`` of ``path/<class>/<image>``: the sorted class
    folders, each image's path relative to ``path`` (sorted per class, in
    class order) and its label int64 ``[N]``. Nothing is decoded."""
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise AuditError(f"--data: {path}: an image folder needs one sub-folder per class; found none")
    files: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        found = sorted(f for f in os.listdir(os.path.join(path, name)) if f.lower().endswith(_IMAGE_SUFFIXES))
        files += [f"{name}/{f}" for f in found]
        labels += [label] * len(found)
    if not files:
        raise AuditError(f"--data: {path}: no images ({', '.join(_IMAGE_SUFFIXES)}) in its class folders")
    return tuple(classes), files, np.asarray(labels, dtype=np.int64)


def decode_image(file_path: str, channels: Optional[int]) -> torch.Tensor:
    """float32 ``[C, H, W]`` in [0, 1]: grayscale modes as 1 channel,
    others as RGB (PIL's ``convert("RGB")``: alpha dropped, as torchvision's
    ImageFolder loader does); ``channels`` forces 1 (PIL's ``convert("L")``)
    or 3 (grayscale repeated)."""
    from PIL import Image

    try:
        with Image.open(file_path) as im:
            if _is_gray(im.mode):
                gray = torch.from_numpy(_gray_pixels(im, file_path))[None]
                return gray.expand(3, -1, -1).contiguous() if channels == 3 else gray
            if channels == 1:
                return torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[None]
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as e:
        raise AuditError(f"--data: {file_path}: not a readable image ({e})") from None
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _gray_pixels(im, file_path: str) -> np.ndarray:
    """float32 ``[H, W]`` in [0, 1] of a grayscale image."""
    if im.mode in ("1", "L", "LA"):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    pixels = np.asarray(im).astype(np.float32)
    if im.mode != "F":
        pixels /= 65535.0
    if not (np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0):
        expected = "[0, 1]" if im.mode == "F" else "0..65535 (16-bit)"
        raise AuditError(f"--data: {file_path}: mode {im.mode!r} values outside {expected}")
    return pixels


def _same_size(images: Sequence[torch.Tensor], files: Sequence[str], transform: Optional[InputTransform]) -> None:
    first = images[0].shape[-2:]
    for image, file in zip(images, files):
        if image.shape[-2:] != first:
            hint = "give --resize (and --crop)" if transform is None or transform.resize is None else \
                "give --crop too"
            raise AuditError(
                f"--data: {file}: every image must have the same size; got {image.shape[-1]}x{image.shape[-2]}, "
                f"the first was {first[1]}x{first[0]} (width x height): {hint}"
            )


def load_image_folder(path: str, limit: Optional[int] = None, seed: int = 0,
                      transform: Optional[InputTransform] = None) -> Dataset:
    """``path/<class>/<image>`` as float32 ``[N, C, H, W]`` in [0, 1], labels
    by sorted class name. Only the ``limit`` files of the stratified sample
    are decoded. Channels: ``transform.channels``, else 1 when every chosen
    image is grayscale, else 3 (grayscale ones repeated)."""
    classes, files, labels = image_files(path)
    chosen = stratified_subset(labels, len(labels) if limit is None else limit, seed)
    channels = None if transform is None else transform.channels
    paths = [os.path.join(path, files[i]) for i in chosen]
    images = [decode_image(p, channels) for p in paths]
    if transform is not None:
        images = [resized(image[None], transform)[0] for image in images]
    _same_size(images, paths, transform)
    if any(image.shape[0] == 3 for image in images):
        images = [image.expand(3, -1, -1) for image in images]
    x, y = _check_arrays(torch.stack(images).numpy(), labels[chosen], path)
    description = (f"image folder {os.path.abspath(path)}" + _sample_note(chosen, len(labels), seed)
                   + _transform_note(transform))
    return Dataset(x, y, description, classes, chosen, tuple(files[i] for i in chosen))


def load_dataset(spec: Optional[str], limit: Optional[int], seed: int = 0,
                 transform: Optional[InputTransform] = None) -> Dataset:
    """The data set named by ``--data`` (None: the digits' held-out split):
    a stratified sample of ``limit`` examples drawn with ``seed``
    (:func:`stratified_subset`; all, in order, without a limit), with
    ``transform``'s resize, crop and channels applied (to an ``.npz``'s
    masks ``s`` too); its mean/std are checked against the channels (they
    go into the model: :func:`~fastattr.cli.transforms.with_normalization`)."""
    if spec is None:
        _, _, x, y = digits_split()
        data = _array_dataset(x, y, "scikit-learn digits, held-out split (every fifth example)",
                              tuple(str(c) for c in range(10)), limit, seed, transform)
    elif not os.path.exists(spec):
        raise AuditError(f"--data: {spec}: no such file or folder")
    elif os.path.isdir(spec):
        data = load_image_folder(spec, limit, seed, transform)
    else:
        x, y, s = load_npz(spec)
        data = _array_dataset(x, y, f"npz {os.path.abspath(spec)}", tuple(str(c) for c in range(y.max() + 1)),
                              limit, seed, transform, s)
    if transform is not None and transform.normalizes:
        check_normalization_fits(transform, data.x.shape[1], spec or "the digits")
    return data
