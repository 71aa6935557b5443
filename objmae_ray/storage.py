"""Files on local disk, NFS or remote storage (a pyarrow URI: s3://bucket/prefix, gs://...), read and written
through pyarrow.fs. Keep URIs as strings (a Path collapses `s3://` to `s3:/`). Credentials come from the
standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for an S3-compatible
server). A failure names the storage and the reason in one line (ConfigError, `storage_error`). The run
directory (objmae_ray/sweep/rundir.py) and the stored pre-trainings (objmae_ray/train/reuse.py) use these.
"""
from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from objmae_ray.errors import ConfigError

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def storage_uri(storage: str) -> str:
    """Absolute local path (Tune needs one) or the URI as given (s3://...)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """uri/part/...: string joining that keeps `s3://` intact."""
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


@functools.lru_cache(maxsize=16)
def _remote_fs(root: str, _env: tuple) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(root)[0]


def storage_error(uri: str, err: BaseException) -> ConfigError:
    """One line naming the storage and the reason (wrong credentials, unreachable endpoint, missing bucket)."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    hint = ""
    if is_remote(uri) and any(s in reason for s in ("ACCESS_DENIED", "INVALID_ACCESS_KEY", "SIGNATURE", "Forbidden")):
        hint = " (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    elif is_remote(uri) and ("NETWORK_CONNECTION" in reason or "connect" in reason.lower()):
        hint = f" (endpoint: AWS_ENDPOINT_URL={os.environ.get('AWS_ENDPOINT_URL', 'unset')})"
    return ConfigError(f"{uri}: {reason}{hint}")


def storage_env() -> dict[str, str]:
    """The standard AWS variables set in this process (credentials, region, endpoint override)."""
    return {k: v for k, v in os.environ.items() if k in AWS_VARS}


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow file system, path in it) of a local path or a URI."""
    uri = str(uri)
    if not is_remote(uri):
        local = uri[len("file://"):] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    scheme, rest = uri.split("://", 1)
    env = tuple(os.environ.get(k) for k in AWS_VARS)
    try:
        fs = _remote_fs(f"{scheme}://{rest.split('/', 1)[0]}", env)
    except (OSError, ValueError) as err:
        raise storage_error(uri, err) from None
    return fs, rest.rstrip("/")


def _info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise storage_error(uri, err) from None


def exists(uri: str) -> bool:
    return _info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise storage_error(uri, err) from None


def file_size(uri: str) -> int | None:
    """The file's size in bytes, or None when it does not exist."""
    info = _info(uri)
    return None if info.type == pafs.FileType.NotFound else info.size


def read_text(uri: str) -> str | None:
    data = read_bytes(uri)
    return None if data is None else data.decode()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file to a local path or a URI (parents created); locally through a temporary name and a
    rename, so a reader never sees half a file (an object store's PUT is already whole)."""
    fs, path = filesystem(uri)
    target = path if is_remote(uri) else f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(target) as out:
            out.write(data)
        if target != path:
            os.replace(target, path)
    except OSError as err:
        raise storage_error(uri, err) from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def listdir(uri: str) -> list[tuple[str, bool]]:
    """(name, is_dir) of the entries directly under uri, sorted; [] when uri does not exist."""
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as err:
        raise storage_error(uri, err) from None
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def download(uri: str, local: str | Path) -> Path:
    """Copy a file or a directory tree from uri to the local path; return it."""
    fs, path = filesystem(uri)
    local = Path(local)
    try:
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            local.mkdir(parents=True, exist_ok=True)
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(local.resolve()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as err:
        raise storage_error(uri, err) from None
    return local


def upload(local: str | Path, uri: str) -> None:
    """Copy a local file or directory tree to uri."""
    fs, path = filesystem(uri)
    try:
        if Path(local).is_dir():
            fs.create_dir(path, recursive=True)
        else:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    except OSError as err:
        raise storage_error(uri, err) from None
