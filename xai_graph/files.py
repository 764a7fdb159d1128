"""Write files so that no run can lose data, and no killed run leaves debris for long.

- `check_writes_spare_reads`: every path a run will write is compared with every
  file its inputs read (resolved paths and inodes, so hard links count) before
  anything is written: a model's output must not be its own weights file.
- `FolderLock`: one run per output folder; the second is refused in one line.
  The lock is an flock, so a killed run releases it with its last breath.
- `scratch_folder`: a temporary folder that holds an flock while its owner lives;
  `remove_stale_scratch` deletes those whose owner died (kill -9) on the next run.
- `write_atomically`: a temporary name in the target folder, then a rename, with
  the permissions the process umask gives (mkstemp alone would leave 0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from xai_graph.errors import XaiGraphError
from xai_graph.formats import companion_files, is_ir

SCRATCH_PREFIX = ".xai-graph-"  # staging folders beside outputs, partial files in output folders
TEMP_PREFIX = "xai-graph-"  # models instrumented on the fly, in the system's temporary folder
_SCRATCH_LOCK = ".owner.lock"
_FOLDER_LOCK = ".xai-graph.lock"


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_process_umask()  # what open() would give a new file


# -- inputs against outputs ------------------------------------------------------------------------------
def files_read_by_model(path: str | os.PathLike) -> list[Path]:
    """The files loading `path` reads: an ONNX model and its external data files, or an IR's .xml and .bin."""
    path = Path(path)
    if is_ir(path):
        return [path, *companion_files(path)]
    files = [path]
    if not path.is_file():  # never open a FIFO or a device here: the loader refuses them in one line
        return files
    with contextlib.suppress(Exception):  # an unreadable model is reported by the loader, not here
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        for tensor in onnx.external_data_helper._get_all_tensors(proto):
            if onnx.external_data_helper.uses_external_data(tensor):
                location = onnx.external_data_helper.ExternalDataInfo(tensor).location
                files.append(path.parent / location)
    return list(dict.fromkeys(files))


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links and bind mounts: same device and inode
    except OSError:
        return False  # one of them does not exist: different files


def check_writes_spare_reads(writes: Iterable[Path], reads: Iterable[Path]) -> None:
    """Refuse, before anything is written, a run that would write over a file it reads."""
    reads = [Path(r) for r in reads]
    for target in writes:
        for source in reads:
            if _same_file(Path(target), source):
                what = "the input" if Path(target).resolve() == source.resolve() else f"{source}, which this run reads"
                raise XaiGraphError(f"{target}: refusing to overwrite {what}; choose another output path")


def inode(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


# -- one run per folder ----------------------------------------------------------------------------------
class FolderLock:
    """An exclusive lock on an output folder for the life of one run."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / _FOLDER_LOCK
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise XaiGraphError(
                    f"{self.path.parent}: another xai-graph run (pid {owner}) is writing to this "
                    "folder; wait for it to finish or choose another folder"
                ) from None
            # The previous owner may have unlinked the file between our open and our lock: lock the current one.
            held = os.fstat(fd)
            if inode(self.path) == (held.st_dev, held.st_ino):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)


# -- scratch folders ------------------------------------------------------------------------------------
@contextlib.contextmanager
def scratch_folder(parent: Path, prefix: str = SCRATCH_PREFIX) -> Iterator[Path]:
    """A fresh folder in `parent`, removed on exit (signals included); after a kill -9, by the next run."""
    remove_stale_scratch(parent, prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(folder / _SCRATCH_LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held while this process lives: the folder is in use
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def remove_stale_scratch(parent: Path, prefix: str = SCRATCH_PREFIX) -> int:
    """Delete scratch folders in `parent` whose owner is gone (their lock is free); returns how many."""
    removed = 0
    try:
        candidates = [p for p in Path(parent).iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return 0
    for folder in candidates:
        try:
            fd = os.open(folder / _SCRATCH_LOCK, os.O_RDWR)
        except OSError:
            continue  # not ours, or not yet set up: leave it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live run owns it
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        removed += 1
    return removed


# -- atomic writes --------------------------------------------------------------------------------------
def staged_file(folder: Path, data: bytes) -> str:
    """`data` in a new hidden file of `folder` with the umask's permissions; the caller moves it into place."""
    fd, tmp = tempfile.mkstemp(prefix=SCRATCH_PREFIX + "part-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_atomically(path: Path, data: bytes) -> Path:
    """Replace `path` with `data`: readers see the old file or the new one, never a part."""
    tmp = staged_file(path.parent, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove_stale_parts(folder: Path) -> None:
    """Partial files a killed run left in `folder` (call with the folder locked: no live writer owns them)."""
    with contextlib.suppress(OSError):
        for part in Path(folder).glob(SCRATCH_PREFIX + "part-*"):
            with contextlib.suppress(OSError):
                part.unlink()


def root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause: 'No space left on device', not a wrapper's message."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def read_small_text(path: Path, limit: int = 16 * 2**20) -> str:
    """A text file a user names (labels): a regular file of at most `limit` bytes, else one-line error."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise XaiGraphError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise XaiGraphError(f"{path}: not a regular file")
    if info.st_size > limit:
        raise XaiGraphError(f"{path}: {info.st_size / 2**20:.0f} MiB; a text file here is at most {limit >> 20} MiB")
    return Path(path).read_bytes()[:limit].decode("utf-8", errors="replace")
