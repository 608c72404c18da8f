# Two entry points a new user needs: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build of torch in pip's find-links (this project's machines keep one on disk) is installed first, so
# the dependency range is already met and pip does not fetch the newest CUDA build (several GB).
LOCAL_TORCH := $(lastword $(sort $(foreach dir,$(PIP_FIND_LINKS),$(wildcard $(dir)/torch-*+cpu-*.whl))))

.PHONY: setup demo test test-all stylize bench-reference quality-reference bench-large cluster-scale gpu-dry-run gpu-parts export clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(LOCAL_TORCH),$(BIN)/pip install --quiet $(LOCAL_TORCH))
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: every usable runner x VGG19, NIN x 64,128,256 px on the built-in demo images (≈3 min on 2 cores);
# tables on screen, JSON/CSV/Markdown/PNG under reports/bench-<time>.*
demo: $(STAMP)
	$(BIN)/onnxstyle bench

stylize: $(STAMP)
	$(BIN)/onnxstyle stylize --demo -o demo.png

# Regenerates the committed reference reports (the README quotes them); the large-size run takes ≈10 min.
bench-reference: $(STAMP)
	$(BIN)/onnxstyle bench --name reference-cpu
	$(BIN)/onnxstyle bench --model vgg --sizes 512,2048 --provider cpu,eager --iterations 1 --runs 3 --warmup 1 --name vgg19-512-2048-cpu
	$(BIN)/onnxstyle bench --model vgg --sizes 128,256 --precision fp32,bf16,fp16 --name vgg19-precision-cpu

# Time to quality with the real vgg19-q8 weights (≈70 min on 2 cores): every default configuration for the same
# wall time, `auto@60` (a one-minute `stylize --max-time 60`) among them, and each one's final picture (the gallery's).
# The reports are named after the CPU's vendor: --engine auto's rules cite the Intel (…-cpu) and the AMD (…-amd) runs.
VENDOR := $(shell grep -qm1 AuthenticAMD /proc/cpuinfo 2>/dev/null && echo amd || echo cpu)
quality-reference: $(STAMP)
	$(BIN)/onnxstyle auto --clear
	$(BIN)/onnxstyle converge --sizes 512 --seconds 300 --images reports/gallery/quality-512-$(VENDOR) --name quality-512-$(VENDOR)

# Tiled large images (issue: 8K): memory against image size and tile size, time per pixel (≈1.5 h on 2 cores).
bench-large: $(STAMP)
	$(BIN)/onnxstyle bench --model vgg --provider cpu --sizes 1024,2048,4096,7680x4320 --tile 512 --iterations 1 --runs 1 --warmup 0 --no-check --name vgg19-tiled-memory-cpu
	$(BIN)/onnxstyle bench --model vgg --provider cpu --sizes 2048 --tile 256 --iterations 1 --runs 1 --warmup 0 --no-check --name vgg19-2048-tile256-cpu
	$(BIN)/onnxstyle bench --model vgg --provider cpu --sizes 2048 --tile 1024 --iterations 1 --runs 1 --warmup 0 --no-check --name vgg19-2048-tile1024-cpu
	$(BIN)/onnxstyle bench --model vgg --provider cpu --sizes 512,4096 --runs 3 --warmup 1 --no-check --name vgg19-tiled-speed-cpu

# 8K tiled over 1–64 nodes (bytes, compute, modelled speed-up) and Ray's measured overhead at 2048 px (≈8 min on 2 cores).
cluster-scale: $(STAMP)
	$(BIN)/onnxstyle cluster-scale --name cluster-scale

# The GPU acceptance run's stages on the CPU provider at 64 px (≈1 min); on a GPU machine see DEVELOPERS.md.
gpu-dry-run: $(STAMP)
	DRY_RUN=1 PYTHON=$(BIN)/python scripts/gpu-acceptance.sh "" gpu-acceptance

# onnxruntime-gpu for Python 3.12, packed into .gpu/ort-N/ parts of 45 MB for a GPU machine without network (≈2.5 min).
gpu-parts: $(STAMP)
	scripts/gpu-parts.sh

# The suite without the cases marked slow (what CI runs); test-all adds them.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

export: $(STAMP)
	$(BIN)/onnxstyle export vgg
	$(BIN)/onnxstyle export nin

clean:
	rm -rf $(VENV) models/*.onnx models/*.json models/cache demo.png
