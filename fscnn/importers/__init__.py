"""Model import: ONNX and TFLite files as :class:`fscnn.nn.Graph` modules.

The format packages (``onnx``, ``tflite``) are optional extras needed only while importing;
an imported graph runs on numpy and scipy alone.
"""
from ._builder import ModelImportError
from .onnx import from_onnx
from .tflite import from_tflite

__all__ = ["ModelImportError", "from_onnx", "from_tflite"]
