"""Outputs that appear whole or not at all, and files checked before they are trusted (layer 0).

Every file or folder crystext writes as a result goes through :func:`atomic_path`: the writer
works on a unique temporary name beside the target (``.NAME.<pid>.<random>.tmp``, same folder so
same file system), the data is fsynced, and only then is it renamed over the target with
``os.replace``. Consequences:

- a reader sees the old complete output or the new complete output, never half of one;
- two runs writing the same target never share a temporary file: the last one to finish wins,
  whole (and :class:`OutputLock` lets a long job refuse to start while another holds the target);
- an error (disk full, Ctrl-C, a bug) removes the temporary file, and a full disk is reported as
  one :class:`DiskFullError` line naming the path, not a traceback.

:func:`check_file` / :func:`check_model_folder` verify safetensors, torch (zip) and JSON files
before they are loaded, so a truncated or empty file is named in one line
(:class:`DamagedFileError`) instead of surfacing as a library's traceback.

:class:`SkippedRows` is the one writer of the ``*.skipped.csv`` files that batch jobs leave beside
their outputs (``id, source, reason, message``).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import socket
import struct
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import CrystextError

#: errno values that mean "no room left" (disk full, quota exceeded, file too large)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
SKIPPED_FIELDS = ["id", "source", "reason", "message"]


class DiskFullError(CrystextError, OSError):
    """Writing an output ran out of disk space (or quota); nothing was left under its name."""

    def __str__(self) -> str:  # one line, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


class DamagedFileError(CrystextError):
    """A file crystext was about to load is empty, truncated or not what its name says.

    Deliberately neither ``OSError`` nor ``ValueError``: loaders that retry on those (transformers'
    pipeline tries every model class) let it through with its one line intact."""


class OutputBusyError(CrystextError, RuntimeError):
    """Another live process is writing the same output (see :class:`OutputLock`)."""


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` (or one in its cause chain) that means no space / quota left."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_error(path: str | os.PathLike, exc: BaseException | None = None) -> DiskFullError:
    """The one-line error for a full disk while writing ``path``."""
    return DiskFullError(errno.ENOSPC, f"{path}: no space left on device while writing it; the partial output was "
                                       "removed (free some space and run again)")


def temp_name(target: str | os.PathLike, suffix: str = "") -> Path:
    """A unique temporary path beside ``target``: ``.NAME.<pid>.<random>.tmp`` + ``suffix`` (a
    suffix such as ``.png`` for writers that pick the format from the name)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


def is_temp_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a name :func:`temp_name` makes (left behind only by a killed process)."""
    name = Path(path).name
    return name.startswith(".") and ".tmp" in name


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync a file, or every file and folder under a folder."""
    path = Path(path)
    if path.is_file():
        _fsync_file(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_dir(Path(root))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def replace(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a complete ``tmp`` (file or folder) to ``target`` atomically.

    A file replaces an old file in one ``os.replace``. A folder cannot be renamed over a non-empty
    one, so an old folder is first renamed aside and removed after: at every moment ``target`` is
    absent, the old whole folder or the new whole folder."""
    tmp, target = Path(tmp), Path(target)
    if tmp.is_dir() and target.is_dir() and not target.is_symlink():
        aside = temp_name(target)
        os.replace(target, aside)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)


@contextmanager
def disk_full_guard(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` meaning "disk full" inside the block into :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from None
        raise


@contextmanager
def atomic_path(target: str | os.PathLike, folder: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a unique temporary path beside ``target``; on success fsync it and rename it into place.

    ``folder=True`` creates the temporary path as an empty folder (for ``save_pretrained`` and the
    like). On any exception (Ctrl-C included) the temporary path is removed and the target is left
    as it was; a full disk becomes :class:`DiskFullError` naming ``target``. ``suffix`` ends the
    temporary name (``.png`` for writers that infer the format from it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target, suffix)
    if folder:
        tmp.mkdir()
    try:
        with disk_full_guard(target):
            yield tmp
            if not tmp.exists():
                raise CrystextError(f"{target}: the writer produced no output")
            fsync_tree(tmp)
            replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value, indent: int | None = 2, **kwargs) -> Path:
    """Write ``value`` as JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(value, indent=indent, **kwargs) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file or folder to ``dst`` atomically; return ``dst``."""
    src = Path(src)
    with atomic_path(dst) as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
    return Path(dst)


def save_into(folder: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Let ``write(tmp_folder)`` write files (``save_pretrained`` and the like) into a temporary
    folder inside ``folder``, then move each file into ``folder`` with ``os.replace``.

    Each file in ``folder`` is at every moment its old whole self or its new whole self; on an
    error (a full disk: :class:`DiskFullError` naming ``folder``) nothing is moved and the
    temporary folder is removed. Sub-folders are moved whole. Return ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(folder / "save")
    tmp.mkdir()
    try:
        with disk_full_guard(folder):
            write(tmp)
            fsync_tree(tmp)
            for item in sorted(tmp.iterdir()):
                replace(item, folder / item.name)
    finally:
        _remove(tmp)
    return folder


# --------------------------------------------------------------------------- one writer per output


class OutputLock:
    """An exclusive lock on an output while a job writes it: ``<target>.lock`` holding the owner's
    pid and host, locked with ``flock`` (released by the kernel even when the owner is killed).

    A second job on the same target raises :class:`OutputBusyError` naming the first one's pid
    instead of racing it. Use as a context manager."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise :class:`OutputBusyError`."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the file may be unlinked by its previous owner between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputBusyError(f"{self.target}: another process ({owner}) is writing it; wait for it to "
                                      f"finish or choose another output (lock file {self.path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)
        raise OutputBusyError(f"{self.target}: could not take the lock {self.path}")  # pragma: no cover

    def release(self) -> None:
        """Remove the lock file and release the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:  # pragma: no cover
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- skipped rows


class SkippedRows:
    """Collects skipped records of a batch job and writes them as CSV (``id, source, reason,
    message``) beside the job's output, atomically. ``path`` is ``OUT.skipped.csv`` for a file
    output and ``OUT/skipped.csv`` for a folder output (see :func:`skipped_path`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, id: str, source: str, reason: str, message: str) -> None:  # noqa: A002 - the column's name
        """Record one skipped record (the message is kept to its first line)."""
        first = str(message).strip().splitlines()[0] if str(message).strip() else ""
        self.rows.append((str(id), str(source), str(reason), first))

    def extend(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """Record several ``(id, source, reason, message)`` rows."""
        for row in rows:
            self.add(*row)

    def __len__(self) -> int:
        return len(self.rows)

    def write(self) -> Path:
        """Write the CSV (a header alone when nothing was skipped); return its path."""
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(SKIPPED_FIELDS)
                writer.writerows(self.rows)
        return self.path


def skipped_path(out: str | os.PathLike, folder: bool = False) -> Path:
    """Where a job writing ``out`` lists its skipped records."""
    out = Path(out)
    return out / "skipped.csv" if folder else out.with_name(out.name + ".skipped.csv")


def read_skipped(path: str | os.PathLike) -> list[dict]:
    """The rows of a skipped-rows CSV as dicts."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- checking files


def _check_safetensors(path: Path, size: int) -> None:
    if size < 8:
        raise DamagedFileError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            raise DamagedFileError(f"{path}: truncated safetensors file (header of {n} bytes, file {size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise DamagedFileError(f"{path}: damaged safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise DamagedFileError(f"{path}: damaged safetensors header")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise DamagedFileError(f"{path}: truncated safetensors file ({size} of {need} bytes)")


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DamagedFileError(f"{path}: truncated or damaged torch file ({exc})") from None
    if bad is not None:
        raise DamagedFileError(f"{path}: damaged torch file (bad CRC in {bad})")


def check_file(path: str | os.PathLike) -> Path:
    """Raise :class:`DamagedFileError` if ``path`` is missing, empty, truncated or unreadable for
    its kind (``.safetensors``: header and data length; ``.bin``/``.pt``/``.pth``/``.pkl``: a
    complete torch zip archive with good CRCs (a legacy pickle: non-empty); ``.json``: parses).
    Other files: present and readable. Return the path."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DamagedFileError(f"{path}: missing") from None
    suffix = path.suffix.lower()
    if size == 0:
        raise DamagedFileError(f"{path}: empty file (0 bytes)")
    if suffix == ".safetensors":
        _check_safetensors(path, size)
    elif suffix in (".bin", ".pt", ".pth", ".pkl"):
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic == b"PK\x03\x04":
            _check_zip(path)
        elif magic[:1] != b"\x80":  # neither a torch zip nor a pickle
            raise DamagedFileError(f"{path}: not a torch or pickle file")
    elif suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:
            raise DamagedFileError(f"{path}: not valid JSON ({exc})") from None
    return path


def check_model_folder(folder: str | os.PathLike) -> Path:
    """Check a ``save_pretrained`` folder's config, weights and tokenizer files before loading it:
    :class:`DamagedFileError` naming the first bad file. A folder without a ``config.json`` is not
    checked here (the loader says it is not a run folder). Return the folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return folder
    check_file(folder / "config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        check_file(index)
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        for shard in shards:
            check_file(folder / shard)
    for pattern in ("*.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json"):
        for file in sorted(folder.glob(pattern)):
            check_file(file)
    return folder
