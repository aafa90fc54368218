"""Read an offline W&B run back from its `.wandb` file (a LevelDB-style log of protobuf records).

Offline runs write no summary or config files, so tests parse the records themselves.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = 7  # ":W&B", 2-byte magic, 1-byte version
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Yield every Record in the file."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(pending)
        yield rec
        pending = b""


def history(path: str | Path) -> list[dict]:
    """The logged rows, each a dict of key -> decoded JSON value."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        row: dict = {}
        for item in rec.history.item:
            keys = list(item.nested_key) or [item.key]
            node = row
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = json.loads(item.value_json)
        rows.append(row)
    return rows


def config(path: str | Path) -> dict:
    """The run's config as logged (keys -> decoded values)."""
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                key = item.nested_key[0] if item.nested_key else item.key
                out[key] = json.loads(item.value_json)
    return out


def run_info(path: str | Path) -> dict:
    """Name, group, job type and tags of the run."""
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            r = rec.run
            return {"name": r.display_name, "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags)}
    return {}


def complete(path: str | Path) -> bool:
    """Whether the run's log ends with its exit record (W&B's writer may still be flushing after `finish`)."""
    try:
        return any(rec.WhichOneof("record_type") == "exit" for rec in records(path))
    except Exception:  # a partly written record
        return False


def find_runs(root: str | Path, timeout: float = 60.0) -> list[Path]:
    """The offline runs under root, once each one's log is completely written (W&B's service writes it
    asynchronously, so it can lag the end of the run by a moment)."""
    deadline = time.monotonic() + timeout
    runs = sorted(Path(root).glob("**/offline-run-*/run-*.wandb"))
    while not all(complete(r) for r in runs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return runs


def exit_code(path: str | Path) -> int | None:
    """The exit code the run finished with (non-zero: W&B shows it failed), None without an exit record."""
    for rec in records(path):
        if rec.WhichOneof("record_type") == "exit":
            return rec.exit.exit_code
    return None


def run_id(path: str | Path) -> str:
    """The W&B run id the records belong to."""
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            return rec.run.run_id
    return ""
