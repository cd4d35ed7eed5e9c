"""The command-line interface (the only layer that prints)."""

from .app import app, main

__all__ = ["app", "main"]
