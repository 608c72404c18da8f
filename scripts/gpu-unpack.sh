#!/usr/bin/env bash
# Reassemble the parts made by scripts/gpu-parts.sh (gathered into one folder) and unpack them into DEST.
# Usage: scripts/gpu-unpack.sh PARTS_DIR DEST [PYTHON]
# Needs only Python (tarfile reads xz): GPU machines need not have zstd or xz installed.
set -euo pipefail
parts_dir=$1
dest=$2
python=${3:-${PYTHON:-python3}}
parts=("$parts_dir"/onnxruntime.tar.xz.part-*)
[ -e "${parts[0]}" ] || { echo "no onnxruntime.tar.xz.part-* in $parts_dir" >&2; exit 2; }
if [ -f "$parts_dir/onnxruntime.tar.xz.sha256" ]; then
    expected=$(cut -d' ' -f1 "$parts_dir/onnxruntime.tar.xz.sha256")
    actual=$(cat "${parts[@]}" | sha256sum | cut -d' ' -f1)
    if [ "$expected" != "$actual" ]; then
        echo "the ${#parts[@]} parts in $parts_dir do not add up: sha256 $actual, expected $expected (a part missing?)" >&2
        exit 3
    fi
fi
mkdir -p "$dest"
cat "${parts[@]}" | "$python" -c '
import sys, tarfile
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz") as archive:
    archive.extractall(sys.argv[1], filter="data")
' "$dest"
echo "unpacked ${#parts[@]} parts into $dest"
