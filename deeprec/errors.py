"""The project's exceptions: anything the user can fix is a DeeprecError, shown as one line."""

from __future__ import annotations

from pathlib import Path


class DeeprecError(Exception):
    """An error caused by input the user controls (names, files, parameters, network)."""


class DataFormatError(DeeprecError):
    """A data file that cannot be used, with the file and (1-based) line at fault."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


class DownloadError(DeeprecError):
    """A dataset that could not be fetched or did not verify; the cache is left untouched."""
