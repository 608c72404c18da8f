#!/usr/bin/env bash
# The GPU acceptance run (issue 15), prepared to run unattended on a CUDA machine without network:
#   env → providers --check → gradient parity (256, 1024 px) → bench A (fp32) → bench B (tf32/fp16/bf16)
#   → bench C (CUDA graphs) → the GPU plugin EPs (TensorRT-RTX, WebGPU) where installed → what stylize --engine auto
#   picks → one tarball of the reports.
#
# Usage: scripts/gpu-acceptance.sh [WHEEL_DIR] [OUT_DIR]
#   WHEEL_DIR  onnxruntime-gpu to use instead of the machine's onnxruntime, installed into a target folder without
#              dependencies: a folder holding the wheel (*.whl), an unpacked onnxruntime/ package, or the parts
#              made by scripts/gpu-parts.sh (onnxruntime.tar.xz.part-*). Nothing is fetched from the network.
#   OUT_DIR    where the reports, the log and the tarball go (default: gpu-acceptance).
# Environment:
#   DRY_RUN=1            the same stages on the CPU provider with tiny sizes (the test suite runs this)
#   ACCEPTANCE_SECONDS   the whole run's budget (default 480); each stage gets a share and is stopped with
#                        Ctrl-C at its end, which keeps the cells it measured
#   PYTHON               the interpreter (default python3); it needs torch, onnx, numpy, pillow, typer, rich, psutil
#                        and matplotlib, not onnxstyle (the repository is put on PYTHONPATH)
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
wheel_dir=${1:-}
out_dir=${2:-gpu-acceptance}
python=${PYTHON:-python3}
dry=${DRY_RUN:-0}
budget=${ACCEPTANCE_SECONDS:-480}
mkdir -p "$out_dir" && out_dir=$(cd "$out_dir" && pwd)
log="$out_dir/acceptance.log"
: >"$log"
started=$SECONDS
say() { echo "[$((SECONDS - started)) s] $*" | tee -a "$log"; }

site=$(mktemp -d "${TMPDIR:-/tmp}/onnxstyle-site.XXXXXX")
if [ -n "$wheel_dir" ]; then
    parts=("$wheel_dir"/onnxruntime.tar.xz.part-*)
    wheels=("$wheel_dir"/onnxruntime_gpu-*.whl)
    if [ -e "${wheels[0]}" ]; then
        say "installing ${wheels[0]##*/} into $site (no dependencies, no index)"
        "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[0]}" >>"$log" 2>&1 || { say "pip could not install the wheel"; exit 3; }
    elif [ -f "$wheel_dir/onnxruntime/__init__.py" ]; then
        site=$(cd "$wheel_dir" && pwd)
        say "using the unpacked onnxruntime in $site"
    elif [ -e "${parts[0]}" ]; then
        say "reassembling ${#parts[@]} parts into $site"
        "$repo/scripts/gpu-unpack.sh" "$wheel_dir" "$site" "$python" >>"$log" 2>&1 || { say "$(tail -1 "$log")"; exit 3; }
    else
        say "WHEEL_DIR $wheel_dir holds no onnxruntime_gpu-*.whl, onnxruntime/ or onnxruntime.tar.xz.part-*"
        exit 2
    fi
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 ONNXSTYLE_OFFLINE=1
cd "$repo" || exit 2
onnxstyle=("$python" -m onnxstyle)

if [ "$dry" = 1 ]; then
    prefix=dryrun-cpu
    ort=cpu torch_runner=torch eager=eager graph=() vgg=nin
    parity_sizes=64 sizes_a=64 sizes_b=64 sizes_c=64 models=nin precisions_b=fp16,bf16 runners_b=cpu,torch auto_size=64
    # a CPU without AVX-512-BF16/AMX has no bf16 runner, and bench refuses a precision no selected runner can run
    "$python" -c 'import sys; from onnxstyle.precision import supported; sys.exit("bf16" not in supported("torch", "cpu")[0])' \
        2>>"$log" || precisions_b=fp16
    timing=(--duration 0.2 --runs 1 --warmup 0)
else
    gpu=$("$python" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>>"$log")
    case "$gpu" in
        *H200*) prefix=h200 ;;
        *H100*) prefix=h100 ;;
        none) say "torch sees no CUDA device; nothing to accept (DRY_RUN=1 runs the stages on the CPU)"; exit 8 ;;
        *) prefix=$(echo "$gpu" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-') ;;
    esac
    ort=cuda torch_runner=torch-cuda eager=eager-cuda graph=(--cuda-graph) vgg=vgg19
    parity_sizes=256,1024 sizes_a=256,512,1024 sizes_b=512,1024 sizes_c=256,1024 models=vgg19,nin precisions_b=tf32,fp16,bf16 auto_size=512
    runners_b=cuda,torch-cuda,eager-cuda
    timing=(--duration 2 --runs 3 --warmup 2)
fi
say "acceptance run '$prefix' in $out_dir (budget ${budget} s)"

# stage SHARE NAME OUTPUT COMMAND...: runs with SHARE% of the budget (at least 30 s, never past the budget), stdout to
# OUTPUT (- for the log); SIGINT at the end lets a bench keep the cells it measured, and 15 s later it is killed. A stage
# stopped at its share (exit 124, or 130 from Ctrl-C) kept what it measured: logged, not counted as a failure.
stage() {
    local share=$1 name=$2 output=$3
    shift 3
    local left=$((budget - (SECONDS - started)))
    local cap=$((budget * share / 100))
    ((cap < 30)) && cap=30
    ((cap > left)) && cap=$left
    if ((cap < 10)); then
        say "$name: skipped, the budget is spent"
        return
    fi
    say "$name: up to ${cap} s: ${*#"$python" -m }"
    if [ "$output" = - ]; then
        timeout -s INT -k 15 "$cap" "$@" >>"$log" 2>&1
    else
        timeout -s INT -k 15 "$cap" "$@" >"$output" 2>>"$log"
    fi
    local code=$?
    if ((code == 124 || code == 130)); then
        say "$name: stopped at its ${cap} s share (what it measured is kept)"
    else
        say "$name: exit $code"
        ((code == 0)) || failed+=("$name (exit $code)")
    fi
}
failed=()

stage 3 env "$out_dir/$prefix-env.txt" "${onnxstyle[@]}" env
timeout 60 "${onnxstyle[@]}" env --json >"$out_dir/$prefix-env.json" 2>>"$log"
stage 10 "providers --check" "$out_dir/$prefix-providers-check.json" "${onnxstyle[@]}" providers --check --json
timeout 60 "${onnxstyle[@]}" providers >"$out_dir/$prefix-providers.txt" 2>>"$log"
stage 12 "gradient parity" - "${onnxstyle[@]}" parity --provider "$ort,$torch_runner" --model "$vgg" --sizes "$parity_sizes" \
    --out "$out_dir" --name "$prefix-parity"
stage 40 "bench A (fp32)" - "${onnxstyle[@]}" bench --provider "$ort,$torch_runner,$eager" --model "$models" --sizes "$sizes_a" \
    --precision fp32 "${timing[@]}" --out "$out_dir" --name "$prefix-bench-fp32"
stage 22 "bench B (tf32, fp16, bf16)" - "${onnxstyle[@]}" bench --provider "$runners_b" --model "$vgg" \
    --sizes "$sizes_b" --precision "$precisions_b" "${timing[@]}" --no-check --out "$out_dir" --name "$prefix-bench-precision"
stage 13 "bench C (CUDA graphs)" - "${onnxstyle[@]}" bench --provider "$ort" --model "$models" --sizes "$sizes_c" "${graph[@]}" \
    "${timing[@]}" --no-check --out "$out_dir" --name "$prefix-bench-cuda-graph"
if [ -f "$out_dir/$prefix-bench-fp32.json" ] && [ -f "$out_dir/$prefix-bench-cuda-graph.json" ]; then
    timeout 60 "${onnxstyle[@]}" report compare "$out_dir/$prefix-bench-fp32.json" "$out_dir/$prefix-bench-cuda-graph.json" \
        --plot "$out_dir/$prefix-cuda-graph-vs-plain.png" >"$out_dir/$prefix-cuda-graph-vs-plain.txt" 2>>"$log"
fi
# GPU plugin EPs: installed (or carried in on PYTHONPATH) or not, whether each lists a device here is recorded; one that
# does is measured beside the built-in provider. An absent or deviceless plugin is a finding, not a failed stage.
timeout 120 "${onnxstyle[@]}" providers --json >"$out_dir/$prefix-plugin-eps.json" 2>>"$log"
for plugin in tensorrt-rtx webgpu; do
    verdict=$("$python" -c '
import json, sys
rows = {row["provider"]: row for row in json.load(open(sys.argv[1])) if row["engine"] == "onnxruntime"}
row = rows.get(sys.argv[2])
print("not listed" if row is None else "usable" if row["usable"] else row["reason"])
' "$out_dir/$prefix-plugin-eps.json" "$plugin" 2>>"$log" || echo "providers --json failed")
    say "plugin $plugin: $verdict"
    if [ "$verdict" = usable ]; then
        stage 8 "plugin $plugin" - "${onnxstyle[@]}" bench --provider "$plugin,$ort" --model "$vgg" --sizes "$sizes_c" \
            --precision fp32 "${timing[@]}" --out "$out_dir" --name "$prefix-bench-$plugin"
    fi
done
# What --engine auto picks here: its one line (in the log) names every candidate it probed and its seconds per iteration.
stage 5 "stylize --engine auto" - "${onnxstyle[@]}" stylize --demo --model "$vgg" --size "$auto_size" --max-time 20 \
    -o "$out_dir/$prefix-auto-$auto_size.png"
say "done in $((SECONDS - started)) s${failed[*]:+; failed: ${failed[*]}}"
(cd "$out_dir" && tar -czf "$prefix-reports.tar.gz" --exclude='*.tar.gz' --exclude='*.lock' -- *)
echo "$out_dir/$prefix-reports.tar.gz"
((${#failed[@]} == 0))
