"""Export formats: the network as ONNX (float, static INT8, end to end), one table of formats."""

from .export import EXPORT_FORMATS, ExportError, export_model, export_onnx

__all__ = ["EXPORT_FORMATS", "ExportError", "export_model", "export_onnx"]
