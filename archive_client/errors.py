"""Specific errors: each says what was received, what was expected and how to fix it."""
from __future__ import annotations

import re

from wsm.errors import UserError

# C0 and C1 controls (ESC starts terminal escape sequences) and the bidirectional overrides that reorder text;
# newline and tab stay, they lay out wsm's own messages
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """str(text) with control characters escaped (``\\x1b``), so that text from a server or a file name
    cannot drive the terminal it is printed on."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


class ArchiveError(UserError):
    """Base class for everything archive_client raises on purpose."""


class InvalidIdError(ArchiveError, ValueError):
    """An image id that is not a safe file name, or an archive id that is not ISIC_ and seven digits (an id
    becomes a path)."""


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


class CorruptArchiveError(ArchiveError):
    """A zip that is cut short or damaged; ``problem`` says what is wrong, the message adds what to do."""

    def __init__(self, problem: str, advice: str = "delete it and download it again"):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


class DiskFullError(ArchiveError, OSError):
    """The disk filled up while writing; files already complete are kept."""
