"""The local web workbench: chat, retrieval view, evals and feedback for each persona."""

from bots.adapters.web.routes import mount_workbench
from bots.adapters.web.workbench import Workbench

__all__ = ["Workbench", "mount_workbench"]
