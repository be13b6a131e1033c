"""The verbs of the `edged` command, each over the parts it needs (cli.py only parses)."""

from __future__ import annotations

from dataclasses import dataclass

from edged.config import Settings
from edged.daemon import build_layout, build_queue
from edged.engine.loader import model_name
from edged.intake import Intake
from edged.settle import Settler
from edged.spool import SpoolFiles, SpoolLayout
from edged.store import Queue


@dataclass
class Parts:
    queue: Queue
    layout: SpoolLayout
    files: SpoolFiles
    settler: Settler

    def intake(self, settings: Settings) -> Intake:
        return Intake(settings, self.queue, self.layout, self.settler, model_name(settings.model, settings.model_dir))


def open_parts(settings: Settings) -> Parts:
    queue = build_queue(settings)
    layout = build_layout(settings)
    files = SpoolFiles(layout, settings.spool.write_result_files)
    return Parts(queue, layout, files, Settler(queue, files))
