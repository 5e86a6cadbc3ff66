"""Specific errors: each says what was received, what was expected and how to fix it."""


class ArchiveError(Exception):
    """Base class for everything archive_client raises on purpose."""


class InvalidIdError(ArchiveError, ValueError):
    """An isic_id that is not ISIC_ followed by seven digits (it would become a path)."""


class InvalidUrlError(ArchiveError, ValueError):
    """A URL that is not http(s)."""


class InvalidInputError(ArchiveError, ValueError):
    """A bad argument or input file given by the user (a missing folder, a CSV without an id column)."""


class ArchiveUnreachableError(ArchiveError):
    """No connection to the archive could be made within the retry budget."""


class QueryError(ArchiveError):
    """The archive refused a search query (HTTP 400)."""


class ArchiveResponseError(ArchiveError):
    """A malformed, truncated or unexpected answer from the archive."""


class DownloadError(ArchiveError):
    """A file could not be fetched or verified after all retries."""


class UnsafeArchiveError(ArchiveError):
    """A zip entry that would escape the destination, is a link, is unexpected or too large."""


class LockedError(ArchiveError):
    """Another wsm process is writing the same folder."""


class DiskFullError(ArchiveError, OSError):
    """The disk filled up while writing; files already complete are kept."""
