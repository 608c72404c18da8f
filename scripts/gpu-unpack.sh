#!/usr/bin/env bash
# Reassemble the parts made by scripts/gpu-parts.sh (gathered into one folder) and unpack them into DEST.
# Usage: scripts/gpu-unpack.sh PARTS_DIR DEST   (checks the archive's sha256 when the .sha256 file is there)
set -euo pipefail
parts_dir=$1
dest=$2
parts=("$parts_dir"/onnxruntime.tar.zst.part-*)
[ -e "${parts[0]}" ] || { echo "no onnxruntime.tar.zst.part-* in $parts_dir" >&2; exit 2; }
if [ -f "$parts_dir/onnxruntime.tar.zst.sha256" ]; then
    expected=$(cut -d' ' -f1 "$parts_dir/onnxruntime.tar.zst.sha256")
    actual=$(cat "${parts[@]}" | sha256sum | cut -d' ' -f1)
    if [ "$expected" != "$actual" ]; then
        echo "the ${#parts[@]} parts in $parts_dir do not add up: sha256 $actual, expected $expected (a part missing?)" >&2
        exit 3
    fi
fi
command -v zstd >/dev/null || { echo "zstd is not installed; unpack the parts on a machine that has it" >&2; exit 3; }
mkdir -p "$dest"
cat "${parts[@]}" | zstd -dc | tar -x -C "$dest"
echo "unpacked ${#parts[@]} parts into $dest"
