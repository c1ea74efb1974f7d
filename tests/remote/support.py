"""Helpers for the remote tests: listening sockets of a process, read from /proc."""

from __future__ import annotations

import os


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_tcp(pid: int) -> list[tuple[str, int]]:
    """(address in hex as /proc shows it, port) of every TCP socket ``pid`` listens on."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as file:
                lines = file.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                address, port = local.split(":")
                found.append((address, int(port, 16)))
    return found


def wildcard_ports(pid: int) -> set[int]:
    """Ports ``pid`` listens on at every interface (0.0.0.0 or ::)."""
    return {port for address, port in listening_tcp(pid) if set(address) == {"0"}}
