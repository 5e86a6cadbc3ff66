"""The base of every error wsm raises on purpose: the CLI prints its message as one line, exit code 2."""
import errno


class UserError(Exception):
    """The root of every error wsm and its archive client raise on purpose: a problem the user can fix, explained
    in the message (what was wrong, what to do). Its two families: WsmError and archive_client's ArchiveError."""


class WsmError(UserError):
    """A problem with wsm's inputs or folders (DATA, BUNDLE, WSM, RUN, a recipe, a flag)."""


class LockedError(WsmError):
    """Another wsm process is writing the same folder."""


class ManifestUnreadableError(WsmError):
    """A manifest file exists but is not readable Parquet."""


# A full disk (or quota) and a read-only file system: no fault of one image or input; a command stops on them.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def disk_error(err: BaseException | None) -> OSError | None:
    """The OSError of a full or read-only disk behind ``err``: itself, or an error it was raised from or while
    handling (torch and other libraries wrap the OSError of a failed write in their own errors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None
