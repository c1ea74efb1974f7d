"""Where a worker's stdout and stderr go (the original's ``fd_redirection``), and their wire
form for the worker's configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import msgspec


@dataclass(frozen=True)
class Forward:
    """Copy each line of the worker's output to the master's, prefixed with the worker's name."""


@dataclass(frozen=True)
class DevNull:
    """Discard the output."""


@dataclass(frozen=True)
class FileAppend:
    """Append the output to a file."""

    path: str | os.PathLike[str]


@dataclass(frozen=True)
class FileTruncate:
    """Write the output to a file, emptied first."""

    path: str | os.PathLike[str]


Redirection = Forward | DevNull | FileAppend | FileTruncate

RedirectMode = Literal["forward", "devnull", "append", "truncate"]


class Redirect(msgspec.Struct, frozen=True):
    """A redirection on the wire: its mode and, for a file, its absolute path."""

    mode: RedirectMode
    path: str = ""


def to_wire(value: Redirection, what: str) -> Redirect:
    """The wire form of ``value``; ``TypeError`` naming ``what`` for anything else."""
    if isinstance(value, Forward):
        return Redirect("forward")
    if isinstance(value, DevNull):
        return Redirect("devnull")
    if isinstance(value, FileAppend):
        return Redirect("append", os.path.abspath(os.fspath(value.path)))
    if isinstance(value, FileTruncate):
        return Redirect("truncate", os.path.abspath(os.fspath(value.path)))
    raise TypeError(f"{what} must be rp.Forward(), rp.DevNull(), rp.FileAppend(path) or "
                    f"rp.FileTruncate(path), got {value!r}")
