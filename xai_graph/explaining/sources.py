"""Where the images of a run come from: folders and globs (`find_images`), and path lists.

A path list is a text file (one path or URI per line; blank lines and `#` comments skipped) or a Parquet file
with a column of paths (`path` unless told otherwise). Lists and their entries may be local paths or URIs that
pyarrow's file systems read (`s3://`, `gs://`, `hdfs://`, `file://`...). Local entries are resolved, as
`find_images` resolves what it finds, so that a record names an image the same way whichever way it was given.

pyarrow is imported only where a Parquet file or a URI needs it: the local engine on folders never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from xai_graph.errors import XaiGraphError
from xai_graph.explaining.images import MAX_IMAGE_BYTES, ImageError, find_images

PATH_COLUMN = "path"


class SourceUri(str):
    """An image named by a URI: a string (records keep it as given) with the `stem` and `name` a Path has, so
    that the result writers name its files as they name a local image's."""

    @property
    def name(self) -> str:
        return PurePosixPath(urlparse(self).path).name

    @property
    def stem(self) -> str:
        return PurePosixPath(urlparse(self).path).stem


Source = Path | SourceUri


def is_uri(text: str) -> bool:
    """'s3://bucket/x.jpg' and 'file:///x.jpg' are URIs; 'C:\\x.jpg' and 'photos/x.jpg' are not."""
    scheme = urlparse(text).scheme
    return len(scheme) > 1 and "://" in text


def as_source(text: str, base: Path | None = None) -> Source:
    """A list entry as a source: a URI as given, a local path resolved (relative to the list's folder)."""
    if is_uri(text):
        return SourceUri(text)
    path = Path(os.path.expanduser(text))
    return (path if path.is_absolute() or base is None else base / path).resolve()


def gather_sources(inputs: list[str], lists: list[str], column: str = PATH_COLUMN) -> list[Source]:
    """The images named by `-i` inputs and `--list` files, in order, without repeats. Raises XaiGraphError with a
    one-line reason for a missing list, a Parquet file without the column, or no images at all."""
    found: list[Source] = list(find_images(list(inputs))) if inputs else []
    for listed in lists:
        found += read_path_list(listed, column)
    if not found:
        raise XaiGraphError(f"no images found in {', '.join([*inputs, *lists])}")
    return list(dict.fromkeys(found))


def read_path_list(where: str, column: str = PATH_COLUMN) -> list[Source]:
    """The entries of a text or Parquet path list (a local file or a URI)."""
    base = None if is_uri(where) else Path(where).resolve().parent
    data = _read_bytes(where, what="path list", limit=1 << 30)
    if where.lower().endswith((".parquet", ".pq")):
        entries = _parquet_column(data, where, column)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise XaiGraphError(
                f"{where}: not a text path list (not UTF-8); a Parquet list must end with .parquet"
            ) from exc
        entries = [line.strip() for line in text.splitlines()]
        entries = [line for line in entries if line and not line.startswith("#")]
    return [as_source(entry, base) for entry in entries]


def _pyarrow(what: str):
    """pyarrow, or a one-line error: it comes with the ray extra, not with the core install."""
    try:
        import pyarrow
        import pyarrow.fs  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise XaiGraphError(f"{what} needs pyarrow: pip install 'xai-graph[ray]'") from exc
    return pyarrow


def _parquet_column(data: bytes, where: str, column: str) -> list[str]:
    pa = _pyarrow("reading a Parquet path list")
    pq = pa.parquet

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise XaiGraphError(f"{where}: not a Parquet file ({_first_line(exc)})") from exc
    if column not in table.column_names:
        raise XaiGraphError(
            f"{where}: no column {column!r} (columns: {', '.join(table.column_names) or 'none'}); "
            "name the column of paths with --list-column"
        )
    values = table.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise XaiGraphError(f"{where}: column {column!r} holds {values.type}, not paths (strings)")
    return [value for value in values.to_pylist() if value]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_bytes(where: str, what: str, limit: int) -> bytes:
    """A whole local file or URI, refused beyond `limit` bytes; errors as one line."""
    if not is_uri(where):
        try:
            if os.path.getsize(where) > limit:
                raise XaiGraphError(f"{where}: larger than {limit >> 20} MiB, too large for a {what}")
            return Path(where).read_bytes()
        except OSError as exc:
            raise XaiGraphError(f"{where}: cannot read the {what} ({exc.strerror or _first_line(exc)})") from exc
    pa = _pyarrow(f"reading {where}")
    pafs = pa.fs
    try:
        filesystem, inner = pafs.FileSystem.from_uri(where)
        info = filesystem.get_file_info(inner)
        if info.type != pafs.FileType.File:
            raise XaiGraphError(f"{where}: no such {what}")
        if info.size is not None and info.size > limit:
            raise XaiGraphError(f"{where}: larger than {limit >> 20} MiB, too large for a {what}")
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    except (pa.ArrowException, OSError) as exc:
        raise XaiGraphError(f"{where}: cannot read the {what} ({_first_line(exc)})") from exc


def read_source(source: Source) -> bytes:
    """The bytes of an image named by a URI (at most MAX_IMAGE_BYTES); ImageError with a one-line reason."""
    try:
        return _read_bytes(str(source), what="image", limit=MAX_IMAGE_BYTES)
    except XaiGraphError as exc:
        raise ImageError(str(exc)) from exc


def fingerprints(sources: list[Source]) -> dict[str, dict | None]:
    """Size and modification time of each source (None where it cannot be read): what tells a rerun that an
    image is the one an earlier run explained. URIs are asked in one call per file system (arrow batches them)."""
    found: dict[str, dict | None] = {}
    by_system: dict[tuple, list[tuple[str, str]]] = {}
    for source in sources:
        if isinstance(source, SourceUri):
            parsed = urlparse(source)
            by_system.setdefault((parsed.scheme, parsed.netloc), []).append((str(source), source))
            continue
        try:
            stat = os.stat(source)
            found[str(source)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        except OSError:
            found[str(source)] = None
    for uris in by_system.values():
        found.update(_uri_fingerprints([uri for uri, _ in uris]))
    return found


def _uri_fingerprints(uris: list[str]) -> dict[str, dict | None]:
    pa = _pyarrow("reading URIs")
    pafs = pa.fs

    try:
        filesystem, _ = pafs.FileSystem.from_uri(uris[0])
        inner = [pafs.FileSystem.from_uri(uri)[1] for uri in uris]
        infos = filesystem.get_file_info(inner)
    except (pa.ArrowException, OSError):
        return {uri: None for uri in uris}
    return {
        uri: {"size": info.size, "mtime_ns": info.mtime_ns} if info.type == pafs.FileType.File else None
        for uri, info in zip(uris, infos)
    }
