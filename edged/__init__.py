"""edged: a batch-processing daemon for edge boxes (spool -> SQLite queue -> Gemma 3 on ONNX Runtime)."""

__version__ = "0.1.0"
