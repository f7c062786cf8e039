"""The recommendation history on disk: the working-set samples per container, so a
daemon restart (or an upgrade) does not start the Rule 1.1 percentile from nothing.

One file in the state directory, written whole to a temporary file and renamed over
the old one (a crash leaves the old file or the new one, never half of one):

    MAGIC (8 bytes) | header length (uint32 LE) | header (JSON, UTF-8)
    | samples (float64 LE, per container in header order, oldest first) | CRC32 (uint32 LE)

The header carries the format version, the sample step, when it was saved and, per
container, its id and sample count. A file this version cannot read (damaged, cut
short, a CRC that does not match, a version it does not know, larger than the bound)
is moved aside, as the journal's database is, and the daemon starts without history:
never silently reused, never deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("supervisor.history_store")

MAGIC = b"RSHIST\x00\x01"
FORMAT_VERSION = 1
FILE_NAME = "history.bin"
# Bounds on what is written and read: a file beyond them was not written by this code.
MAX_CONTAINERS = 4096
MAX_SAMPLES_PER_CONTAINER = 1 << 20
MAX_FILE_BYTES = 256 << 20
_LEN = struct.Struct("<I")


class HistoryFileError(Exception):
    """A history file this version cannot read."""


@dataclass
class StoredHistory:
    """What a history file holds: per container id its samples, oldest first."""

    step_s: float
    saved_at_s: float
    samples: dict[str, np.ndarray] = field(default_factory=dict)


def encode(data: StoredHistory, max_samples: int) -> bytes:
    """The file's bytes; at most ``max_samples`` (the newest) per container and at most
    MAX_CONTAINERS containers (the most sampled), so the file stays bounded."""
    max_samples = max(1, min(int(max_samples), MAX_SAMPLES_PER_CONTAINER))
    rows = sorted(((cid, np.asarray(v, dtype="<f8")[-max_samples:])
                   for cid, v in data.samples.items() if len(v)),
                  key=lambda kv: (-len(kv[1]), kv[0]))[:MAX_CONTAINERS]
    header = json.dumps({"version": FORMAT_VERSION, "step_s": float(data.step_s),
                         "saved_at_s": float(data.saved_at_s),
                         "containers": [{"id": cid, "n": int(len(v))} for cid, v in rows]},
                        separators=(",", ":")).encode()
    body = b"".join([MAGIC, _LEN.pack(len(header)), header] + [v.tobytes() for _, v in rows])
    return body + _LEN.pack(zlib.crc32(body) & 0xFFFFFFFF)


def decode(raw: bytes) -> StoredHistory:
    """The history in ``raw``; HistoryFileError says why it cannot be read."""
    if len(raw) > MAX_FILE_BYTES:
        raise HistoryFileError(f"{len(raw)} bytes, above the bound of {MAX_FILE_BYTES}")
    if len(raw) < len(MAGIC) + 2 * _LEN.size or raw[:len(MAGIC)] != MAGIC:
        raise HistoryFileError("not a history file (bad magic)")
    body, crc = raw[:-_LEN.size], _LEN.unpack(raw[-_LEN.size:])[0]
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise HistoryFileError("checksum mismatch (damaged or cut short)")
    off = len(MAGIC)
    (hlen,) = _LEN.unpack_from(body, off)
    off += _LEN.size
    try:
        header = json.loads(body[off:off + hlen].decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise HistoryFileError(f"header unreadable: {e}") from None
    off += hlen
    if not isinstance(header, dict):
        raise HistoryFileError("header is not an object")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise HistoryFileError(f"format version {version!r}; this version reads {FORMAT_VERSION}")
    try:
        step_s = float(header["step_s"])
        saved_at_s = float(header["saved_at_s"])
        rows = [(str(r["id"]), int(r["n"])) for r in header["containers"]]
    except (KeyError, TypeError, ValueError) as e:
        raise HistoryFileError(f"header incomplete: {e!r}") from None
    if len(rows) > MAX_CONTAINERS or any(not 0 < n <= MAX_SAMPLES_PER_CONTAINER for _, n in rows):
        raise HistoryFileError("more containers or samples than the bound")
    if off + 8 * sum(n for _, n in rows) != len(body):
        raise HistoryFileError("sample data does not match the header")
    out = StoredHistory(step_s=step_s, saved_at_s=saved_at_s)
    for cid, n in rows:
        out.samples[cid] = np.frombuffer(body, dtype="<f8", count=n, offset=off).astype(np.float64)
        off += 8 * n
    return out


class HistoryStore:
    """Reads and writes the history file at ``path``."""

    def __init__(self, path: str):
        self.path = path
        self.moved_aside_to = ""  # where an unreadable file went, for the log and tests
        self.problem = ""

    def load(self) -> StoredHistory | None:
        """The stored history, or None when there is none or it cannot be read (then the
        file is moved aside)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("history file %s cannot be read: %s; starting without history",
                        self.path, e)
            return None
        try:
            return decode(raw)
        except HistoryFileError as e:
            self.problem = str(e)
            self._move_aside()
            return None

    def _move_aside(self) -> None:
        target = f"{self.path}.damaged-{int(time.time())}"
        try:
            os.replace(self.path, target)
            self.moved_aside_to = target
            log.warning("history file %s cannot be read (%s): moved to %s; starting "
                        "without history", self.path, self.problem, target)
        except OSError as e:
            log.warning("history file %s cannot be read (%s) nor moved aside: %s",
                        self.path, self.problem, e)

    def save(self, data: StoredHistory, max_samples: int) -> int:
        """Writes the file atomically (temporary file, fsync, rename); returns its size."""
        raw = encode(data, max_samples)
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".history.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return len(raw)
