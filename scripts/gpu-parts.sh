#!/usr/bin/env bash
# Prepare onnxruntime-gpu for a GPU machine that has no network and takes at most 64 MiB per call (DEVELOPERS.md):
# fetch the cp312 wheel, pack its onnxruntime/ folder with xz (Python's tarfile unpacks it there: no zstd or xz needed
# on that machine), and split it into 45 MB parts, one folder per call:
#   .gpu/ort-1/onnxruntime.tar.xz.part-aa, .gpu/ort-2/…-ab, …, the last folder also holding the archive's sha256
# Usage: scripts/gpu-parts.sh [VERSION]   (≈2.5 min on 2 cores; .gpu/ is git-ignored)
set -euo pipefail
version=${1:-1.31.1}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 "onnxruntime-gpu==$version" -d "$work"
(cd "$work" && unzip -q onnxruntime_gpu-*.whl 'onnxruntime/*' && tar -c onnxruntime | xz -9 -T2 -q >onnxruntime.tar.xz)
rm -rf "$repo/.gpu" && mkdir -p "$repo/.gpu"
(cd "$work" && split -b 45M onnxruntime.tar.xz onnxruntime.tar.xz.part- && sha256sum onnxruntime.tar.xz >onnxruntime.tar.xz.sha256)
index=0
for part in "$work"/onnxruntime.tar.xz.part-*; do
    index=$((index + 1))
    mkdir -p "$repo/.gpu/ort-$index"
    mv "$part" "$repo/.gpu/ort-$index/"
done
cp "$work/onnxruntime.tar.xz.sha256" "$repo/.gpu/ort-$index/"
ls -l "$repo"/.gpu/*/
