"""edged: a batch-processing daemon for edge boxes (spool -> SQLite queue -> Gemma 3 on ONNX Runtime)."""

import os as _os

__version__ = "0.1.0"

# ONNX Runtime 1.31's Linux build carries Microsoft's 1DS telemetry: at import it stores a device
# id under $XDG_CACHE_HOME or ~/.cache (printing a coloured warning where it cannot, as under a
# read-only home) and would send events. No traffic leaves an edge box, and its log is edged's
# alone: off unless the operator sets ORT_DISABLE_TELEMETRY=0. Set before anything imports it.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
