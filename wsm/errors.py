"""The base of every error wsm raises on purpose: the CLI prints its message as one line, exit code 2."""


class WsmError(Exception):
    """A problem the user can fix, explained in the message (what was wrong, what to do)."""


class LockedError(WsmError):
    """Another wsm process is writing the same folder."""


class ManifestUnreadableError(WsmError):
    """A manifest file exists but is not readable Parquet."""
