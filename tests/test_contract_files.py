"""contract.files: atomic writes and recognising a full or read-only disk."""

from __future__ import annotations

import errno
import json
import os

import pytest

from contract.files import atomic_write_json, storage_error, tree_sha256


def test_atomic_write_gives_an_ordinary_readable_file(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"], "no temporary file left behind"


@pytest.mark.parametrize("error,expected", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EDQUOT, "quota"), "Disk quota exceeded"),
    (OSError(errno.EROFS, "ro"), "Read-only file system"),
    (RuntimeError("tensorflow: ... No space left on device"), "No space left on device"),
    (OSError(errno.ENOENT, "missing"), None),
    (ValueError("bad value"), None),
])
def test_storage_error_recognises_full_and_read_only_disks(error, expected):
    assert storage_error(error) == expected


def test_storage_error_looks_through_wrapped_exceptions():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space")
        except OSError as inner:
            raise ValueError("saving the model failed") from inner
    except ValueError as outer:
        assert storage_error(outer) == "No space left on device"


def test_tree_hash_depends_on_names_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1")
    first = tree_sha256(tmp_path / "a")
    (tmp_path / "a" / "x.bin").write_bytes(b"2")
    assert tree_sha256(tmp_path / "a") != first
    (tmp_path / "a" / "x.bin").write_bytes(b"1")
    assert tree_sha256(tmp_path / "a") == first
    (tmp_path / "a" / "x.bin").rename(tmp_path / "a" / "y.bin")
    assert tree_sha256(tmp_path / "a") != first
