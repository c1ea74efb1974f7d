"""How workers are launched on other hosts; ``RemoteExecutable`` ships the application."""

from .executable import RemoteExecutable

__all__ = ["RemoteExecutable"]
