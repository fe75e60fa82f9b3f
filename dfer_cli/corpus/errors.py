"""Errors of a corpus run: usage problems found before any video is read, a machine that
cannot go on (a full disk, an output folder held by another run).
"""
from __future__ import annotations


class CorpusError(ValueError):
    """A usage problem found before any video is read (the CLI exits 2 with its message)."""


class CorpusStopped(CorpusError):
    """The run cannot go on for a reason of the machine (exit 1, not a usage error): the
    output folder's manifest cannot be written (a full disk)."""


class CorpusBusy(CorpusStopped):
    """Another run holds the output folder's manifest."""
