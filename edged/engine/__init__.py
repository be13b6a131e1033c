"""The engine: ONNX Runtime sessions, tokenizer, image preprocessing, batched generation.

It knows nothing of files, SQL or the queue: the worker hands it Requests.
"""

from edged.engine.api import Engine, EngineError, Generation, ModelUnavailable, Request, RequestError

__all__ = ["Engine", "EngineError", "Generation", "ModelUnavailable", "Request", "RequestError"]
