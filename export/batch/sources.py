"""What a batch job reads: a folder tree, a text file of paths, WebDataset ``.tar`` shards or
Parquet files with an image-bytes column, listed as a stream of deterministic shards.

Every source yields :class:`Item` s in one fixed order (sorted names, depth first; the text
file's line order; tar members in archive order; Parquet rows in file order), so shard ``i`` is
the same images on every run. Nothing is listed ahead of need: a folder of a million files
yields its first shard after reading the first directories. Each item carries what the job's
fingerprint needs (its size and modification time) and a locator a decode worker can open on
its own (a path, a tar member's offset, or the bytes themselves for Parquet).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..data import IMAGE_SUFFIXES
from ..data.pixels import walk_images

#: the members of a WebDataset sample that hold an image (the rest are metadata)
TAR_IMAGE_SUFFIXES = (*IMAGE_SUFFIXES, ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: members a WebDataset sample may carry beside its image
TAR_METADATA_SUFFIXES = (".cls", ".txt", ".json", ".cls2", ".id", ".key", ".meta")
KINDS = ("folder", "list", "tar", "parquet")


class SourceChanged(UserError):
    """A source file differs from what was listed: the job stops rather than mix two versions."""


@dataclass(frozen=True)
class Item:
    """One image to classify: its key in the output, its locator, size and stamp.

    ``locator``: ``("file", path)``, ``("tar", tar path, offset, size)`` or ``("bytes", data)``.
    ``size``/``mtime_ns`` are the file's (for a tar member: the member's size and the tar's
    time) and go into the shard's digest, so a changed input refuses a resume.
    """

    key: str
    locator: tuple[Any, ...]
    size: int
    mtime_ns: int

    def stamp(self) -> str:
        return f"{self.key}\t{self.size}\t{self.mtime_ns}"


@dataclass(frozen=True)
class Shard:
    """``size`` consecutive items of the listing, numbered from 0; ``digest`` fingerprints them."""

    index: int
    items: tuple[Item, ...]
    digest: str

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}"


def source_kind(path: Path) -> str:
    """What ``path`` is as a source (a folder, ``.txt``/``.lst``, ``.tar``, ``.parquet``)."""
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".txt", ".lst"):
        return "list"
    if suffix == ".tar":
        return "tar"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise UserError(f"{path}: not a source resnet-batch reads (a folder of images, a .txt file "
                    "of paths, WebDataset .tar shards or .parquet files)")


def check_sources(paths: list[Path], column: str | None) -> list[tuple[str, Path]]:
    """Each source path with its kind; one line for a missing, unreadable or unknown one."""
    kinds = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise UserError(f"cannot read source {path}: {exc.strerror or exc}") from None
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            raise UserError(f"source {path} is not a folder or a regular file")
        if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)):
            raise UserError(f"cannot read source {path}: permission denied")
        kinds.append((source_kind(path), path))
    if any(k == "parquet" for k, _ in kinds) and not column:
        raise UserError("a Parquet source needs --column NAME: the column of encoded image bytes")
    for kind, path in kinds:
        if kind == "parquet":
            assert column is not None
            parquet_file(path, column)
    return kinds


def _walk(root: Path) -> Iterator[Item]:
    """Image files under ``root`` as :func:`walk_images` finds them; keys are relative."""
    for entry in walk_images(root):
        st = entry.stat()
        yield Item(Path(entry.path).relative_to(root).as_posix(), ("file", entry.path),
                   st.st_size, st.st_mtime_ns)


def _list_file(path: Path) -> Iterator[Item]:
    """One image path per line (relative to the list's folder unless absolute); blank lines and
    ``#`` comments skipped. A path that cannot be read is still an item: it becomes an error."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, streamed
    except OSError as exc:
        raise UserError(f"cannot read source {path}: {exc.strerror or exc}") from None
    with fh:
        try:
            for line in fh:
                name = line.strip()
                if not name or name.startswith("#"):
                    continue
                full = Path(name) if os.path.isabs(name) else path.parent / name
                try:
                    st = os.stat(full)
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    size, mtime = -1, 0
                yield Item(name, ("file", str(full)), size, mtime)
        except UnicodeDecodeError:
            raise UserError(f"{path} is not a UTF-8 text file of image paths") from None


def _tar(path: Path) -> Iterator[Item]:
    """WebDataset samples: members grouped by the name before the first dot of the file name;
    each sample's image member is the item. A sample without an image member is refused."""
    st = os.stat(path)
    try:
        archive = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read {path} as an uncompressed tar archive: {exc}") from None
    with archive:
        pending: dict[str, list[tarfile.TarInfo]] = {}
        order: list[str] = []
        try:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                sample = (folder + "/" if folder else "") + base.split(".", 1)[0]
                if order and order[-1] != sample:  # samples are contiguous in WebDataset
                    yield from _tar_sample(path, st, order[-1], pending.pop(order[-1]))
                if sample not in pending:
                    order.append(sample)
                    pending[sample] = []
                pending[sample].append(member)
        except tarfile.TarError as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        if order and order[-1] in pending:
            yield from _tar_sample(path, st, order[-1], pending.pop(order[-1]))


def _tar_sample(path: Path, st: os.stat_result, sample: str,
                members: list[tarfile.TarInfo]) -> Iterator[Item]:
    images = [m for m in members if Path(m.name).suffix.lower() in TAR_IMAGE_SUFFIXES]
    if not images:
        names = ", ".join(m.name for m in members)
        raise UserError(f"{path}: sample {sample!r} holds no image member ({names}); a "
                        f"WebDataset image is a member ending in one of "
                        f"{', '.join(TAR_IMAGE_SUFFIXES)}")
    others = [m for m in members if m not in images and
              Path(m.name).suffix.lower() not in TAR_METADATA_SUFFIXES]
    if others:
        raise UserError(f"{path}: member {others[0].name!r} is not an image "
                        f"(sample {sample!r} already has {images[0].name!r})")
    for member in images:
        yield Item(f"{path.name}/{member.name}", ("tar", str(path), member.offset_data,
                                                  member.size, st.st_size, st.st_mtime_ns),
                   member.size, st.st_mtime_ns)


def parquet_file(path: Path, column: str) -> Any:
    """The open Parquet file, its ``column`` checked to hold bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"cannot read {path} as Parquet: {exc}") from None
    schema = pf.schema_arrow
    if column not in schema.names:
        raise UserError(f"{path} has no column {column!r} (columns: {', '.join(schema.names)})")
    kind = schema.field(column).type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise UserError(f"column {column!r} of {path} is {kind}, not binary: it must hold "
                        "each image's encoded bytes (PNG/JPEG)")
    return pf


def _parquet(path: Path, column: str) -> Iterator[Item]:
    """Rows of ``column`` (binary) in file order, keyed ``file.parquet#row``; the bytes travel
    with the item. The file is stat'ed before and after: a file rewritten meanwhile refuses."""
    import pyarrow as pa

    before = os.stat(path)
    pf = parquet_file(path, column)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[column]):
            for data in batch.column(0).to_pylist():
                key = f"{path.name}#{row}"
                row += 1
                size = -1 if data is None else len(data)
                yield Item(key, ("bytes", data), size, before.st_mtime_ns)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise SourceChanged(f"{path} changed while the job read it")


def items(kinds: list[tuple[str, Path]], column: str | None = None) -> Iterator[Item]:
    """Every item of every source, in order."""
    for kind, path in kinds:
        if kind == "folder":
            yield from _walk(path)
        elif kind == "list":
            yield from _list_file(path)
        elif kind == "tar":
            yield from _tar(path)
        else:
            assert column is not None  # check_sources requires it
            yield from _parquet(path, column)


def shards(stream: Iterator[Item], size: int) -> Iterator[Shard]:
    """Consecutive groups of ``size`` items, each with the sha256 of its items' stamps."""
    index, chunk = 0, []
    for item in stream:
        chunk.append(item)
        if len(chunk) == size:
            yield _shard(index, chunk)
            index, chunk = index + 1, []
    if chunk:
        yield _shard(index, chunk)


def _shard(index: int, chunk: list[Item]) -> Shard:
    digest = hashlib.sha256("\n".join(i.stamp() for i in chunk).encode()).hexdigest()
    return Shard(index, tuple(chunk), digest)


def count(kinds: list[tuple[str, Path]], column: str | None = None) -> int:
    """How many items the sources hold (for the progress bar's total; read in a thread)."""
    total = 0
    for kind, path in kinds:
        if kind == "parquet":
            assert column is not None
            total += parquet_file(path, column).metadata.num_rows
        else:
            total += sum(1 for _ in items([(kind, path)], column))
    return total


def describe(kinds: list[tuple[str, Path]], column: str | None) -> list[dict[str, Any]]:
    """The sources as job.json records them (absolute paths: a rerun must name the same)."""
    return [{"kind": kind, "path": str(path.resolve()),
             **({"column": column} if kind == "parquet" else {})} for kind, path in kinds]
