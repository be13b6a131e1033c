"""The spool: inbox folders, watching, stability, safety checks, and moving inputs out."""

from edged.spool.files import Moved, SpoolFiles, error_note_name
from edged.spool.layout import (
    Fingerprint,
    IgnoreRules,
    InputChanged,
    InputRefused,
    Inspection,
    SpoolLayout,
)
from edged.spool.root import SpoolRoot, UnsafePath, candidates, fit_name
from edged.spool.watch import SpoolWatcher, StabilityTracker, filesystem_type, is_network_fs

__all__ = [
    "Fingerprint", "IgnoreRules", "InputChanged", "InputRefused", "Inspection", "Moved", "SpoolFiles",
    "SpoolLayout", "SpoolRoot", "SpoolWatcher", "StabilityTracker", "UnsafePath", "candidates", "error_note_name",
    "filesystem_type", "fit_name", "is_network_fs",
]
