"""One training process per run folder: an advisory flock on <workdir>/train.lock (holding the pid); and
one writer at a time for a file that several processes read, change and write back (`waiting_lock`).

Two processes in one folder would interleave their checkpoints and metrics.jsonl. The kernel releases a
flock when its process dies, however it dies, so a killed run never leaves its folder locked. Without
flock (Windows) nothing guards the folder.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ftjax.errors import InputError

try:
  import fcntl
except ImportError:  # Windows
  fcntl = None

LOCK_FILE = "train.lock"


def _try_lock(fd: int) -> bool:
  """Takes the exclusive lock without blocking."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False


def _holder(fd: int) -> str:
  """The pid the lock's holder wrote into the file ("?" between its lock and its write)."""
  return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"


def _claim(fd: int) -> None:
  """Records this process as the holder of the lock it has just taken."""
  os.ftruncate(fd, 0)
  os.pwrite(fd, str(os.getpid()).encode(), 0)


def workdir_holder(workdir) -> str | None:
  """The pid of the process training in `workdir` now, or None when none is (or locks are unsupported)."""
  file = Path(workdir) / LOCK_FILE
  if fcntl is None or not file.exists():
    return None
  with open(file, "r+") as f:
    if not _try_lock(f.fileno()):
      return _holder(f.fileno())
    fcntl.flock(f, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def exclusive_workdir(workdir: Path):
  """Holds <workdir>/train.lock for the block; InputError naming the holder's pid if another has it."""
  if fcntl is None:
    yield
    return
  fd = os.open(Path(workdir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    for _ in range(5):  # workdir_holder's probe holds the lock for microseconds: a few tries let it pass
      if _try_lock(fd):
        break
      time.sleep(0.1)
    else:
      holder = _holder(fd)
      raise InputError(
        f"{workdir} is in use: another process (pid {holder}) is training in it. Wait for it "
        "or stop it (rerunning the command afterwards resumes from its latest checkpoint); "
        "two runs in one folder would interleave their checkpoints and metrics.jsonl"
      )
    _claim(fd)
    yield
  finally:
    os.close(fd)  # releases the lock


@contextlib.contextmanager
def waiting_lock(lock_file: Path, say=print):
  """Holds the flock on `lock_file` for the block, waiting (and saying so, naming the holder's pid) while
  another process has it. For read-modify-write of a shared file: two reproduce.py drivers of one table
  that finish cells together would each write the table from what it read before the other's write, and
  the later write would drop the other's cell."""
  if fcntl is None:
    yield
    return
  fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    if not _try_lock(fd):
      say(f"{lock_file} is held by another process (pid {_holder(fd)}); waiting for it")
      fcntl.flock(fd, fcntl.LOCK_EX)
    _claim(fd)
    yield
  finally:
    os.close(fd)  # releases the lock
