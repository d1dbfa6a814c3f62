"""User-facing errors: the CLI prints them as one line and exits with status 2 (no traceback).

Operating-system failures (a folder that is a file, a read-only disk, a full disk) are the user's to fix
too: the CLI prints them as one line naming the path and the cause. Running out of a resource (disk
space, quota, file size limit, memory) exits with its own status, 3, so a script can tell "free space and
run again" (finished work is kept; the run resumes) from a mistake in the input.
"""

from __future__ import annotations

import errno
import os

#: Exit status of a mistake in the input, a busy out_dir, or any other OS failure the user can fix.
EXIT_USER = 2
#: Exit status when a resource ran out: disk full, quota exceeded, file size limit, out of memory.
EXIT_RESOURCE = 3

#: How the CLI begins every one-line error (a parent reading a child's stderr looks for it too).
ERROR_PREFIX = "babyllama: error: "

RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM}

_HINTS = {
    errno.ENOSPC: "no space left on the device; free some and run the command again (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again (finished work is kept)",
    errno.EFBIG: "file too large for this file system or process limit (ulimit -f); finished work is kept",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, expected a file",
}


class UserError(Exception):
    """A mistake in the user's input (config, paths, data) rather than a bug in babyllama."""


def describe_os_error(e: OSError) -> tuple[str, int]:
    """(one line naming the path and the cause, exit status) for an OSError."""
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and e.filename is not None:
        blocker = _file_in_the_way(os.fspath(e.filename))
        if blocker is not None:
            return f"{blocker}: is a file, not a folder (needed as a folder for {e.filename})", EXIT_USER
    cause = _HINTS.get(e.errno) or e.strerror or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "I/O error"
    return f"{where}: {cause}", EXIT_RESOURCE if e.errno in RESOURCE_ERRNOS else EXIT_USER


def _file_in_the_way(path: str) -> str | None:
    """The first part of ``path`` that exists and is not a folder (or None)."""
    parts = os.path.normpath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        head = os.sep.join(parts[:i]) or os.sep
        if os.path.exists(head) and not os.path.isdir(head):
            return head
    return None


def write_failure(exc: BaseException, path: os.PathLike | str) -> OSError:
    """The OSError behind a failed write that a library reported as something else (torch's RuntimeError
    "unexpected pos", safetensors' "(os error 28)", numpy's errno-less OSError), with the most likely
    errno: the one the library quotes, else EFBIG under a file size limit, else ENOSPC on a nearly full
    disk, else EIO."""
    import re
    import resource
    import shutil

    if isinstance(exc, OSError) and exc.errno is not None:
        return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, os.fspath(path))
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        code = int(found.group(1))
    elif resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        code = errno.EFBIG
    else:
        try:
            nearly_full = shutil.disk_usage(os.path.dirname(os.fspath(path)) or ".").free < 64 << 20
        except OSError:
            nearly_full = False
        code = errno.ENOSPC if nearly_full else errno.EIO
    return OSError(code, os.strerror(code), os.fspath(path))


def looks_like_write_failure(exc: BaseException) -> bool:
    """True for the exceptions libraries raise when the file system refuses a write."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return any(s in text for s in ("os error", "unexpected pos", "write failed", "file write", "No space left"))


#: How torch reports running out of memory when it raises a RuntimeError rather than a MemoryError.
OUT_OF_MEMORY_MARKS = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory",
                       "CUBLAS_STATUS_ALLOC_FAILED", "MPS backend out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors: torch.OutOfMemoryError (CUDA) and the CPU allocator's
    RuntimeError "DefaultCPUAllocator: can't allocate memory", which are resources, not bugs."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OUT_OF_MEMORY_MARKS)


def describe_out_of_memory(exc: BaseException) -> str:
    """One line for an out-of-memory error, with what torch said and what to change."""
    said = (str(exc).strip().splitlines() or [""])[0][:160]
    return (f"out of memory{f' ({said})' if said else ''}; use smaller batches (train.batch_size, eval.batch_size) "
            "or models, or a machine with more memory; finished work is kept")
