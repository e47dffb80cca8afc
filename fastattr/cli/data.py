"""The audited data set, in memory: inputs ``x`` float32 ``[N, *F]`` and
integer labels ``y`` int64 ``[N]``, from scikit-learn's digits, an ``.npz``
or an image folder; and a content hash that identifies it."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import List, Optional, Tuple

import numpy as np

from .config import AuditError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [N, *F]
    y: np.ndarray  # int64 [N]
    description: str
    class_names: Tuple[str, ...]

    def content_hash(self) -> str:
        """sha256 of the shapes and bytes of ``x`` and ``y``."""
        h = hashlib.sha256()
        for a in (self.x, self.y):
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


def load_npz(path: str) -> Dataset:
    """An ``.npz`` with ``x`` ``[N, ...]`` (float or uint8, scaled to [0, 1]) and ``y`` ``[N]``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise AuditError(f"--data: {path}: missing array(s) {missing}; has {f.files}")
            x, y = f["x"], f["y"]
    except (OSError, ValueError) as e:
        raise AuditError(f"--data: {path}: not a readable .npz without pickled objects ({e})") from None
    x, y = _check_arrays(x, y, path)
    n = y.max() + 1
    return Dataset(x, y, f"npz {os.path.abspath(path)}", tuple(str(c) for c in range(n)))


def load_image_folder(path: str) -> Dataset:
    """``path/<class>/<image>``: RGB float32 ``[N, 3, H, W]`` in [0, 1], labels by sorted class name."""
    from PIL import Image

    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise AuditError(f"--data: {path}: an image folder needs one sub-folder per class; found none")
    images: List[np.ndarray] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        for file in sorted(os.listdir(folder)):
            if not file.lower().endswith(_IMAGE_SUFFIXES):
                continue
            file_path = os.path.join(folder, file)
            try:
                with Image.open(file_path) as im:
                    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except OSError as e:
                raise AuditError(f"--data: {file_path}: not a readable image ({e})") from None
            if images and a.shape != images[0].shape:
                raise AuditError(
                    f"--data: {file_path}: every image must have the same size; got {a.shape[1]}x{a.shape[0]}, "
                    f"the first was {images[0].shape[1]}x{images[0].shape[0]}"
                )
            images.append(a)
            labels.append(label)
    if not images:
        raise AuditError(f"--data: {path}: no images ({', '.join(_IMAGE_SUFFIXES)}) in its class folders")
    x = np.stack(images).transpose(0, 3, 1, 2)
    x, y = _check_arrays(x, np.asarray(labels, dtype=np.int64), path)
    return Dataset(x, y, f"image folder {os.path.abspath(path)}", tuple(classes))


def load_dataset(spec: Optional[str], limit: Optional[int]) -> Dataset:
    """The data set named by ``--data`` (None: the digits' held-out split), cut to ``limit`` examples."""
    if spec is None:
        _, _, x, y = digits_split()
        data = Dataset(x, y, "scikit-learn digits, held-out split (every fifth example)",
                       tuple(str(c) for c in range(10)))
    elif not os.path.exists(spec):
        raise AuditError(f"--data: {spec}: no such file or folder")
    elif os.path.isdir(spec):
        data = load_image_folder(spec)
    else:
        data = load_npz(spec)
    if limit is not None and limit < len(data.y):
        data = dataclasses.replace(data, x=data.x[:limit], y=data.y[:limit])
    return data
