"""The spool: inbox folders, watching, stability, safety checks, and moving inputs out."""

from edged.spool.files import SpoolFiles, atomic_write, move_no_clobber
from edged.spool.layout import Fingerprint, IgnoreRules, InputRefused, Inspection, SpoolLayout
from edged.spool.watch import SpoolWatcher, StabilityTracker, filesystem_type, is_network_fs

__all__ = [
    "Fingerprint", "IgnoreRules", "InputRefused", "Inspection", "SpoolFiles", "SpoolLayout", "SpoolWatcher",
    "StabilityTracker", "atomic_write", "filesystem_type", "is_network_fs", "move_no_clobber",
]
