"""bots: a folder of instructions and documents becomes a chat bot on one shared local model."""

__version__ = "0.1.0"
