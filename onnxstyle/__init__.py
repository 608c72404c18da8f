"""onnxstyle: portable, measurable neural style transfer (Gatys et al.) on ONNX Runtime and torch."""

__version__ = "0.1.0"
