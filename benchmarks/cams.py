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

For the forward-only CAMs (Score-CAM, Ablation-CAM) a **floor** column
times bare no-grad forwards of as many rows as fastattr's call runs, in
its batch sizes (recorded by a forward hook): ``grad-cam/floor`` is the most
any implementation that runs those rows can gain over pytorch-grad-cam on
this machine, ``fa/floor`` what fastattr's own work around them costs. The
floor runs the rows as they are (contiguous); fastattr runs Score-CAM's
masked images channels-last on the CPU, which oneDNN convolves faster, so
``fa/floor`` may be below 1.
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


FORWARD_ONLY = ("score_cam", "ablation_cam")


def batches_run(model: torch.nn.Module, call: Callable[[], np.ndarray]) -> List[int]:
    """The batch size of every forward ``call`` runs through ``model``."""
    sizes: List[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        call()
    finally:
        handle.remove()
    return sizes


def floor_call(model: torch.nn.Module, x: torch.Tensor, sizes: List[int]) -> Callable[[], np.ndarray]:
    """Bare no-grad forwards of masked copies of ``x``'s images, one per batch size in ``sizes``."""
    rows = sum(sizes)
    masked = x.repeat_interleave(-(-rows // x.shape[0]), dim=0)[:rows] * torch.rand(rows, 1, *x.shape[2:])
    starts = np.cumsum([0, *sizes])

    def run() -> np.ndarray:
        with torch.no_grad():
            for r0, r1 in zip(starts[:-1], starts[1:]):
                model(masked[r0:r1])
        return np.zeros(0)

    return run


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
    print(f"{'method':<20}{'fastattr s':>12}{'grad-cam s':>12}{'floor s':>10}{'grad-cam/fa':>13}"
          f"{'grad-cam/floor':>16}{'fa/floor':>10}{'max |diff|':>13}")
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

        calls = [ours, theirs]
        if name in FORWARD_ONLY:
            calls.append(floor_call(model, x, batches_run(model, ours)))
        times, results = best_of(calls, args.repeats)
        t_fa, t_gc = times[:2]
        diff = np.abs(results[0] - results[1]).max()
        floor = (f"{times[2]:>10.3f}{t_gc / t_fa:>13.2f}{t_gc / times[2]:>16.2f}{t_fa / times[2]:>10.2f}"
                 if len(times) > 2 else f"{'-':>10}{t_gc / t_fa:>13.2f}{'-':>16}{'-':>10}")
        print(f"{name:<20}{t_fa:>12.3f}{t_gc:>12.3f}{floor}{diff:>13.2e}", flush=True)


if __name__ == "__main__":
    main()
