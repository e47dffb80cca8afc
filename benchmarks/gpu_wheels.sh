#!/usr/bin/env bash
# Fills .whl/ (in the repo root, git-ignored) with the wheels the GPU check
# needs and the lent GPU machines lack (they reach no package index; their
# image has torch, numpy, pandas, scikit-learn, scikit-image, opencv, timm,
# transformers and pytest): the anchors the CUDA tests and benchmarks compare
# with. Run it here, where pip reaches an index, then carry `.whl` in the
# device call; benchmarks/gpu_check.sh installs every carried wheel whose
# package is missing. Pure-Python wheels only, so the machine's Python
# version does not matter.
#
#   bash benchmarks/gpu_wheels.sh        (from anywhere)
set -euo pipefail
cd "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/.."
mkdir -p .whl
# name==version: Captum and Quantus are the benchmarks' anchors, Zennit the
# LRP tests'; cachetools (Quantus) and ttach (pytorch-grad-cam): requirements
# missing from the image.
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    captum==0.9.0 quantus==0.6.0 zennit==0.5.1 cachetools ttach
# pytorch-grad-cam (the CAM tests' anchor) is published as a source
# distribution only: build its wheel here.
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl grad-cam==1.5.7
ls -l .whl
du -sh .whl
