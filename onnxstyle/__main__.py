"""``python -m onnxstyle``: the CLI without its console script (a machine where onnxstyle is only on PYTHONPATH)."""

from onnxstyle.cli import main

main()
