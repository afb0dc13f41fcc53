"""python -m export.published RUN [--models-dir models]: exit 0 if a published version was made from
this run's best.keras (same sha256), 1 if not. `make run` uses it to export only when needed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract import run_folder as rf
from contract.files import sha256_file
from contract.manifest import ManifestError, ModelRepository, read_manifest


def find_published(run: Path, models_dir: Path) -> Path | None:
    best = rf.resolve_run(run) / rf.BEST_MODEL
    digest = sha256_file(best)
    repository = ModelRepository(models_dir)
    for name in repository.names():
        for version in repository.versions(name):
            try:
                manifest = read_manifest(version.path)
            except ManifestError:
                continue
            if manifest.get("source", {}).get("model_sha256") == digest:
                return version.path
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.published", description=__doc__)
    parser.add_argument("run")
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args(argv)
    try:
        found = find_published(Path(args.run), Path(args.models_dir))
    except rf.RunFolderError:
        return 1
    if found:
        print(f"{args.run} is already published as {found}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
