"""The CAM family: fastattr vs pytorch-grad-cam 1.5.7 at its defaults.

    python benchmarks/cams.py                 # ResNet-18, 4 x 3x224x224, CPU, best of 3
    python benchmarks/cams.py --repeats 1     # quicker
    python benchmarks/cams.py --only 'score|ablation'

ResNet-18 with random weights (seed 0, eval), layer ``layer4[-1]``, a
different class per example. fastattr's calls ask for pytorch-grad-cam's
output (``upsample_to_input=True, scale=True``) and run at their defaults
(1 GiB chunks on the CPU); pytorch-grad-cam's classes at theirs (Score-CAM
``batch_size=16``; Ablation-CAM ``batch_size=32``,
``ratio_channels_to_ablate=1.0``). Each row also prints the largest
difference between the two maps (values in [0, 1]). Times are the best of
``--repeats`` calls of each, alternated.
"""
from __future__ import annotations

import argparse
import os
import re
import time
from typing import Callable, List, Tuple

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import numpy as np
import torch
import torchvision

from fastattr.attr import cam_family

METHODS = (
    ("grad_cam_plus_plus", "GradCAMPlusPlus"),
    ("xgrad_cam", "XGradCAM"),
    ("hires_cam", "HiResCAM"),
    ("layer_cam", "LayerCAM"),
    ("eigen_cam", "EigenCAM"),
    ("score_cam", "ScoreCAM"),
    ("ablation_cam", "AblationCAM"),
)


def best_of(calls: List[Callable[[], np.ndarray]], repeats: int) -> Tuple[List[float], List[np.ndarray]]:
    """Best wall time of each call over ``repeats`` alternated rounds, and each call's last result."""
    best = [float("inf")] * len(calls)
    results: List[np.ndarray] = [None] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            results[i] = call()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--only", default="", help="regex on the method name")
    args = parser.parse_args()

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    classes = [(17 * i + 3) % 1000 for i in range(args.batch)]
    layer = model.layer4[-1]
    print(f"ResNet-18 (random weights), {args.batch} x 3x{args.size}x{args.size}, layer4[-1], CPU, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'method':<20}{'fastattr s':>12}{'grad-cam s':>12}{'grad-cam/fa':>13}{'max |diff|':>13}")
    for name, class_name in METHODS:
        if args.only and not re.search(args.only, name):
            continue
        fn = getattr(cam_family, name)
        cls = getattr(pytorch_grad_cam, class_name)

        def ours() -> np.ndarray:
            return fn(model, x, layer, classes, upsample_to_input=True, scale=True).numpy()

        def theirs() -> np.ndarray:
            with cls(model, [layer]) as cam:
                return cam(x, [ClassifierOutputTarget(c) for c in classes])

        (t_fa, t_gc), (m_fa, m_gc) = best_of([ours, theirs], args.repeats)
        print(f"{name:<20}{t_fa:>12.3f}{t_gc:>12.3f}{t_gc / t_fa:>13.2f}{np.abs(m_fa - m_gc).max():>13.2e}",
              flush=True)


if __name__ == "__main__":
    main()
