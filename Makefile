# Two entry points a new user needs: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test export clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
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
