"""One way to reach files: local paths and any URI pyarrow understands (s3://, gs://, hdfs://)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

_USER_INFO = re.compile(r"\b([a-zA-Z][\w+.-]*://)[^/@\s]+@")
PUBLISHED = "_published.json"  # object storage: the file in a published directory that names its current version
_VERSION = re.compile(r"[A-Za-z0-9][\w.-]*")


def is_remote(uri: str) -> bool:
    return "://" in uri


def redact(text: str) -> str:
    """`text` with the user:secret@ part of every URI in it replaced by ***@, for what is printed or stored."""
    return _USER_INFO.sub(r"\1***@", text)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or a URI."""
    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


@dataclass(frozen=True)
class ConditionalObject:
    """One S3 object written only when it is as the writer last saw it (S3's conditional writes: If-None-Match
    to create, If-Match on the ETag to replace), so two writers cannot both believe they wrote it last."""

    client: object  # a boto3 S3 client
    bucket: str
    key: str

    def read(self) -> tuple[bytes, str] | None:
        """(content, ETag), or None when there is no such object."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return response["Body"].read(), response["ETag"]

    def create(self, content: bytes) -> str | None:
        """Write `content` if the object does not exist; its ETag, or None when it does exist."""
        return self._put(content, IfNoneMatch="*")

    def replace(self, content: bytes, etag: str) -> str | None:
        """Write `content` if the object still has `etag`; the new ETag, or None when it changed or went away."""
        return self._put(content, IfMatch=etag)

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def _put(self, content: bytes, **condition) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=content, **condition)["ETag"]
        except ClientError as error:  # lost the race: changed (412), written at once (409) or gone (404)
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                               "NoSuchKey", "404"):
                return None
            raise


@dataclass(frozen=True)
class BucketUri:
    """An s3:// or gs:// URI as pyarrow reads it (s3://key:secret@bucket/path?endpoint_override=host:port&scheme=http
    &region=r), taken apart for clients that name these settings their own way (boto3, LanceDB)."""

    location: str  # scheme://bucket/path, without credentials or query
    bucket: str
    path: str  # within the bucket, no leading /
    access_key: str | None
    secret_key: str | None
    endpoint: str | None  # with its scheme: http://host:port
    region: str | None


def bucket_uri(uri: str) -> BucketUri | None:
    """`uri` taken apart, or None when it is not s3:// or gs://."""
    parts = urlsplit(uri)
    if parts.scheme not in ("s3", "gs"):
        return None
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    bucket = parts.netloc.rpartition("@")[2]
    return BucketUri(f"{parts.scheme}://{bucket}{parts.path}", bucket, parts.path.lstrip("/"),
                     unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None, endpoint, query.get("region"))


def conditional_object(uri: str, name: str) -> ConditionalObject | None:
    """Object `name` in the directory at an s3:// URI (credentials, endpoint and region from the URI, else boto3's
    own chain), or None for other URIs, whose stores offer no conditional write here."""
    parsed = bucket_uri(uri)
    if parsed is None or not parsed.location.startswith("s3://"):
        return None
    import boto3

    client = boto3.client("s3", endpoint_url=parsed.endpoint, region_name=parsed.region,
                          aws_access_key_id=parsed.access_key, aws_secret_access_key=parsed.secret_key)
    return ConditionalObject(client, parsed.bucket, posixpath.join(parsed.path, name))


def cache_dir() -> Path:
    """Where local copies of remote directories live: $RAYLIB_CACHE_DIR, else ~/.cache/raylib."""
    return Path(os.environ.get("RAYLIB_CACHE_DIR") or "~/.cache/raylib").expanduser()


def remote_files(uri: str) -> dict[str, pafs.FileInfo]:
    """The files under the directory at `uri`, by their path relative to it (empty when there is none)."""
    fs, root = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {posixpath.relpath(info.path, root): info for info in infos if info.type == pafs.FileType.File}


def copy_location(uri: str, files: dict[str, pafs.FileInfo]) -> Path:
    """Where local_copy keeps its copy of `files`: a folder named by a hash of their paths, sizes and
    modification times, so a directory published again is fetched anew."""
    root = resolve(uri)[1]
    listing = [root] + [[name, info.size, info.mtime_ns] for name, info in sorted(files.items())]
    key = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return cache_dir() / "copies" / f"{posixpath.basename(root.rstrip('/')) or 'root'}-{key}"


def local_copy(uri: str, files: dict[str, pafs.FileInfo], skip: Callable[[str], bool] = lambda name: False) -> Path:
    """A local copy of `files` (from remote_files(uri)) but those `skip` names, shared by one machine's processes.

    A later call with a narrower `skip` adds only the missing files. Processes fetching the same copy at
    once take turns (a lock file beside it): the first downloads, the others find the files in place. Each
    file lands by rename: a reader never sees half a file. A name that would land outside the copy (a key
    with `..` in it) is refused, before anything is copied, with a ValueError naming it.
    """
    fs = resolve(uri)[0]
    directory = copy_location(uri, files)
    real = directory.resolve()
    for name in files:
        if real not in (directory / name).resolve().parents:
            raise ValueError(f"remote directory {redact(uri)} lists a file {name!r} that would land outside its "
                             "local copy; remove that object")
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory.with_name(f"{directory.name}.lock")):
        for name, info in files.items():
            target = directory / name
            if skip(name) or (target.is_file() and target.stat().st_size == info.size):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
            with fs.open_input_stream(info.path) as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 22)
            os.replace(partial, target)
    return directory


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; waits while another holds it."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_remote(fs: pafs.FileSystem, source: str, target: str) -> None:
    """publish_local for object storage (paths within `fs`): the copy goes to `<target>-<version>`, then
    `<target>/_published.json` names it, written in one put (atomic on object stores), so readers that follow it
    (published_version) see the previous version or this one, whole. The previous version stays (a reader may
    still be in it), older ones are deleted, and so are the files of a directory published before versions."""
    parent, name = posixpath.split(target.rstrip("/"))
    version = f"{name}-{uuid.uuid4().hex[:12]}"
    fs.create_dir(posixpath.join(parent, version), recursive=True)
    pafs.copy_files(source, posixpath.join(parent, version), source_filesystem=fs, destination_filesystem=fs)
    pointer = posixpath.join(target, PUBLISHED)
    previous = _pointed_version(fs, pointer)
    with fs.open_output_stream(pointer) as out:
        out.write(json.dumps({"version": version}).encode())
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        stale = posixpath.basename(info.path)
        if info.type == pafs.FileType.Directory and stale.startswith(f"{name}-") and stale not in (version, previous):
            fs.delete_dir(info.path)
    for info in fs.get_file_info(pafs.FileSelector(target, recursive=True)):
        if info.type == pafs.FileType.File and info.path != pointer:
            fs.delete_file(info.path)


def published_version(uri: str) -> str:
    """The URI to read for the directory at `uri`: the version its _published.json names (publish_remote), else
    `uri` itself. ValueError for a pointer that names no plain directory name."""
    fs, root = resolve(uri)
    version = _pointed_version(fs, posixpath.join(root, PUBLISHED))
    if version is None:
        return uri
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=posixpath.join(posixpath.dirname(parts.path.rstrip("/")), version)))


def _pointed_version(fs: pafs.FileSystem, pointer: str) -> str | None:
    try:
        with fs.open_input_stream(pointer) as handle:
            version = json.loads(handle.read()).get("version")
    except FileNotFoundError:
        return None
    except (ValueError, AttributeError):
        version = None
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ValueError(f"{pointer} does not name a published version ({{\"version\": \"<name>-<id>\"}}); publish "
                         "the model again")
    return version


def publish_local(source: Path, target: Path) -> None:
    """Make `target` show a copy of the directory `source`, atomically: readers see the previous version or this
    one, whole, never a missing or half-copied directory. The copy goes to `<target>-<version>` and `target`
    becomes a symbolic link to it, switched in one rename; the previous version stays (a reader may still be in
    it), older ones are deleted. A `target` that is a plain directory (published before versions) is moved aside
    and kept as the previous version: that one switch leaves a moment without `target`."""
    version = target.with_name(f"{target.name}-{uuid.uuid4().hex[:12]}")
    shutil.copytree(source, version)
    previous = target.readlink().name if target.is_symlink() else None
    if target.is_dir() and not target.is_symlink():
        previous = target.with_name(f"{target.name}-{uuid.uuid4().hex[:12]}").name
        target.rename(target.with_name(previous))
    link = target.with_name(f".{target.name}-{uuid.uuid4().hex[:12]}.link")
    link.symlink_to(version.name, target_is_directory=True)
    os.replace(link, target)
    for stale in target.parent.glob(f"{target.name}-*"):
        if stale.name not in (version.name, previous):
            shutil.rmtree(stale, ignore_errors=True)
