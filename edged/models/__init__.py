"""Getting a model onto the box: export, quantization, import, verification, the manifest.

Only `edged.models.manifest` is imported by the daemon; everything else needs the `export`
extra (torch, transformers, onnx).
"""
