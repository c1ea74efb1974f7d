"""Real daemons for tests: a loopback sshd, a namespace host with its own sshd, a bare host
Python and a single-node Slurm cluster. See README.md for the fixtures and their use."""

from ._proc import Unavailable, alive, processes_mentioning, wait_until
from .bare_python import BarePython
from .netns import NamespaceHost
from .slurm import SlurmCluster
from .sshd import Sshd, SshHost

__all__ = [
    "BarePython",
    "NamespaceHost",
    "SlurmCluster",
    "SshHost",
    "Sshd",
    "Unavailable",
    "alive",
    "processes_mentioning",
    "wait_until",
]
