# Two entry points a new user needs: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build of torch in pip's find-links (this project's machines keep one on disk) is installed first, so
# the dependency range is already met and pip does not fetch the newest CUDA build (several GB).
LOCAL_TORCH := $(lastword $(sort $(foreach dir,$(PIP_FIND_LINKS),$(wildcard $(dir)/torch-*+cpu-*.whl))))

.PHONY: setup demo test export clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(LOCAL_TORCH),$(BIN)/pip install --quiet $(LOCAL_TORCH))
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/onnxstyle env
	$(BIN)/onnxstyle stylize --demo -o demo.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

export: $(STAMP)
	$(BIN)/onnxstyle export vgg
	$(BIN)/onnxstyle export nin

clean:
	rm -rf $(VENV) models/*.onnx models/*.json models/cache demo.png
