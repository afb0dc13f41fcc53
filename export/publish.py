"""Publishing a model version: written aside, renamed into place only when every gate passed.

    models/<name>/.staging-<pid>-<token>/   while being written (readers ignore hidden folders)
    models/<name>/<version>/               after the rename: complete, or not there at all
"""

from __future__ import annotations

import os
import secrets
import shutil
import zipfile
from pathlib import Path

from contract.manifest import ModelRepository

STAGING_PREFIX = ".staging-"
# Fixed zip entry time: the bundle's bytes depend on its contents only.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class DestinationError(OSError):
    """The model repository cannot be written (missing permission, read-only, full)."""


def open_staging(repository: ModelRepository, name: str) -> Path:
    """A fresh hidden folder beside the versions of `name`; clears leftovers of killed exports."""
    directory = repository.model_dir(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(directory)
        staging = directory / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        probe = staging / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise DestinationError(f"Cannot write to the model repository {directory}: {err.strerror or err}. "
                               "Choose a writable --models-dir or fix its permissions.") from None
    return staging


def remove_abandoned_staging(directory: Path) -> None:
    """Staging folders whose process is gone (a killed export) are deleted; live ones are left alone."""
    for path in directory.glob(f"{STAGING_PREFIX}*"):
        pid_text = path.name[len(STAGING_PREFIX):].split("-")[0]
        if pid_text.isdigit() and _alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(staging: Path, repository: ModelRepository, name: str, write_manifest) -> Path:
    """Give the staged folder the next version number and rename it into place.

    `write_manifest(version)` writes manifest.json into the staging folder (the manifest names its
    own version). If another export takes the number first, the next one is tried."""
    for _ in range(100):
        version = repository.next_version(name)
        write_manifest(version)
        _fsync_tree(staging)
        target = repository.model_dir(name) / str(version)
        try:
            os.rename(staging, target)  # atomic on one file system; fails if target exists and is not empty
        except OSError as err:
            if target.exists():
                continue
            raise DestinationError(f"Cannot publish {target}: {err.strerror or err}") from None
        _fsync_dir(target.parent)
        return target
    raise DestinationError(f"Could not find a free version number under {repository.model_dir(name)}")


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_zip(path: Path, members: dict[str, Path]) -> Path:
    """A zip whose bytes depend only on the members' names and contents (fixed times, sorted)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname in sorted(members):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[arcname].read_bytes())
    return path
