"""The job folder: what a job is (its identity), ``job.json``, and who may write the folder.

A job is the artifact (its digest, with the ``deploy`` section that says how it runs), the
sources (kinds and absolute paths) and the settings that shape the output (top-k, logits,
shard and batch size). ``job.json`` records it when the job starts; a rerun with the same
identity resumes, another refuses in one line unless ``--restart``. Each committed shard's
marker holds the digest of its listing (keys, sizes, times): a source changed under a
committed shard refuses too. A folder that holds anything but a job's output is never written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.fileio import write_json
from ..core.manifest import Manifest
from .shards import COMMITTED, ERRORS, PREDICTIONS

SCHEMA = "resnet-batch"
SCHEMA_VERSION = 1
JOB_FILE = "job.json"
LOCK_FILE = ".resnet-batch.lock"
#: what a job writes in its folder (besides hidden temporary files)
OURS = {JOB_FILE, LOCK_FILE, "errors.parquet", PREDICTIONS, ERRORS, COMMITTED}


def artifact_digest(manifest: Manifest) -> str:
    """sha256 of what decides the predictions: the artifact file's sha256, the manifest's own
    digest, and its ``deploy`` section (a plan's runtime and precision)."""
    entry = next((f for f in manifest["files"] if f["path"] == manifest["artifact"]), None)
    ident = {"artifact": entry["sha256"] if entry else manifest["artifact"],
             "manifest": manifest.get("manifest_sha256"), "deploy": manifest.get("deploy")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """What makes two runs the same job."""

    artifact: str
    sources: list[dict[str, Any]]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact_digest": self.artifact, "sources": self.sources,
                "settings": self.settings}

    def difference(self, job: dict[str, Any]) -> str | None:
        """How a recorded job differs from this one, in words (None: the same job)."""
        if job.get("artifact_digest") != self.artifact:
            return "another artifact (or another deploy section)"
        if job.get("sources") != self.sources:
            return "other sources"
        for key, value in self.settings.items():
            if job.get("settings", {}).get(key) != value:
                return f"another {key} ({job.get('settings', {}).get(key)} then, {value} now)"
        return None


def read_job(out: Path) -> dict[str, Any] | None:
    """The folder's job.json, or None where there is none; a foreign one refuses."""
    path = out / JOB_FILE
    if not path.exists():
        return None
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a resnet-batch job file ({exc}); choose another --out"
                        ) from None
    if not isinstance(job, dict) or job.get("schema") != SCHEMA:
        raise UserError(f"{path} is not a resnet-batch job file; choose another --out")
    return job


def check_folder(out: Path) -> dict[str, Any] | None:
    """The job already in ``out`` (None: empty or new). A folder holding anything else is
    refused: its files are the user's and are never overwritten."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not out.exists():
        return None
    job = read_job(out)
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    if job is None and names - {"errors.parquet", PREDICTIONS, ERRORS, COMMITTED}:
        shown = ", ".join(sorted(names)[:3])
        raise UserError(f"--out {out} holds files that are not a resnet-batch job's output "
                        f"({shown}{', ...' if len(names) > 3 else ''}); choose an empty or new "
                        "folder")
    if job is None and names:  # parts without job.json: never ours to resume or remove
        raise UserError(f"--out {out} holds job output but no {JOB_FILE}; choose another folder")
    return job


def lock(out: Path) -> Any:
    """An exclusive lock on the folder for this process's lifetime: two jobs never share one."""
    fh = open(out / LOCK_FILE, "a")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UserError(f"another resnet-batch job is writing {out}") from None
    return fh


def restart(out: Path) -> None:
    """Remove a previous job's output (only what a job writes; anything else stays)."""
    for name in (PREDICTIONS, ERRORS, COMMITTED):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("errors.parquet", JOB_FILE):
        (out / name).unlink(missing_ok=True)


def resume_or_refuse(out: Path, identity: Identity, job: dict[str, Any] | None,
                     restarting: bool) -> bool:
    """True when this run continues ``job``; refuses another job unless ``restarting``."""
    if job is None:
        return False
    why = identity.difference(job)
    if why is None:
        return True
    if not restarting:
        raise UserError(f"--out {out} holds a job with {why}; rerun with --restart to start it "
                        "over, or choose another --out")
    restart(out)
    return False


def write_job(out: Path, identity: Identity, **fields: Any) -> None:
    """job.json (written whole, atomically)."""
    write_json(out / JOB_FILE, {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                **identity.to_dict(), **fields})


def prepare(out: Path) -> None:
    """Create the output folder (and its parents)."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror or exc}") from None
