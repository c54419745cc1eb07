"""The workbench: a web page on the `bots serve` port to watch, chat with and test personas."""

from bots.adapters.web.routes import Workbench, mount_workbench

__all__ = ["Workbench", "mount_workbench"]
