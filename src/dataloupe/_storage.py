"""Where a project's tables live, and the one place that reads and writes them.

A location is a local folder or a folder on an object store that Lance supports
(``s3://bucket/prefix``, ``gs://``, ``az://``). Lance datasets are opened and written
here only, always with the location's ``storage_options``; the small JSON files beside
them (a table's revision log and settings) go through ``pyarrow.fs`` with the same
settings. Nothing else in dataloupe touches a table's files.

``storage_options`` come from the environment (:func:`storage_options_from_env`): the
standard ``AWS_*`` variables for S3 and S3-compatible servers, plus
``DATALOUPE_STORAGE_OPTIONS`` (a JSON object of any keys Lance accepts) on top.

Example:
    >>> loc = Location("/tmp/demo-project/tables") / "cm"
    >>> loc.name, loc.is_local
    ('cm', True)
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dataloupe._fileio import write_bytes_atomic

SCHEMES = ("s3", "gs", "az")  # object stores: Lance's URI schemes that pyarrow.fs also reads
OPTIONS_ENV = "DATALOUPE_STORAGE_OPTIONS"


class StorageError(Exception):
    """A location that cannot be used (unknown scheme, bad options); the message says why."""


def is_uri(text: str | os.PathLike) -> bool:
    """True for ``scheme://...`` text other than ``file://`` (a local path)."""
    s = str(text)
    return "://" in s and not s.startswith("file://")


def scheme_of(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise StorageError(f"unsupported store {uri!r}: use a local folder or one of "
                           + ", ".join(f"{s}://bucket/prefix" for s in SCHEMES))
    return scheme


def storage_options_from_env(uri: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Lance ``storage_options`` for ``uri`` from environment variables.

    S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` (an S3-compatible server); an ``http://`` endpoint, or
    ``AWS_ALLOW_HTTP=true``, sets ``allow_http``. Any store: ``DATALOUPE_STORAGE_OPTIONS``,
    a JSON object, is merged last (e.g. ``{"google_service_account": "/key.json"}``).

    Example:
        >>> storage_options_from_env("s3://b/p", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
        {'aws_endpoint': 'http://127.0.0.1:9000', 'allow_http': 'true'}
    """
    env = os.environ if env is None else env
    opts: dict[str, str] = {}
    if scheme_of(uri) == "s3":
        for key, names in (("aws_access_key_id", ["AWS_ACCESS_KEY_ID"]),
                           ("aws_secret_access_key", ["AWS_SECRET_ACCESS_KEY"]),
                           ("aws_session_token", ["AWS_SESSION_TOKEN"]),
                           ("aws_region", ["AWS_REGION", "AWS_DEFAULT_REGION"]),
                           ("aws_endpoint", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])):
            value = next((env[n] for n in names if env.get(n)), None)
            if value:
                opts[key] = value
        if opts.get("aws_endpoint", "").startswith("http://") or env.get("AWS_ALLOW_HTTP", "").lower() == "true":
            opts["allow_http"] = "true"
    if env.get(OPTIONS_ENV):
        try:
            extra = json.loads(env[OPTIONS_ENV])
        except ValueError as e:
            raise StorageError(f"{OPTIONS_ENV} is not valid JSON: {e}") from None
        if not isinstance(extra, dict):
            raise StorageError(f"{OPTIONS_ENV} must be a JSON object of option names to values")
        opts.update({str(k): str(v) for k, v in extra.items()})
    return opts


@dataclass(frozen=True)
class Location:
    """A folder: a local path or an object-store URI, with the options to reach it.

    Attributes:
        uri: an absolute local path, or ``scheme://bucket/prefix`` (no trailing slash).
        storage_options: Lance's options for the store (credentials: never printed).
        lock_dir: local folder for write locks of an object-store location (fcntl needs a
            local file); a local location keeps its lock inside itself.
    """

    uri: str
    storage_options: dict = field(default_factory=dict, repr=False, compare=False)
    lock_dir: Path | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if is_uri(self.uri):
            scheme_of(self.uri)
            object.__setattr__(self, "uri", self.uri.rstrip("/"))
        else:
            local = Path(self.uri.removeprefix("file://")).expanduser()
            object.__setattr__(self, "uri", str(local if local.is_absolute() else local.resolve()))

    # ---- path-like ---------------------------------------------------------------
    def __truediv__(self, name: str) -> "Location":
        return Location(f"{self.uri}/{name}", self.storage_options, self.lock_dir)

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return not is_uri(self.uri)

    @property
    def path(self) -> Path:
        """The local folder (only for a local location)."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is on an object store, not a local folder")
        return Path(self.uri)

    def exists(self) -> bool:
        if self.is_local:
            return self.path.exists()
        from pyarrow.fs import FileType  # noqa: PLC0415

        fs, key = self._fs()
        return fs.get_file_info(key).type != FileType.NotFound

    def is_file(self) -> bool:
        if self.is_local:
            return self.path.is_file()
        from pyarrow.fs import FileType  # noqa: PLC0415

        fs, key = self._fs()
        return fs.get_file_info(key).type == FileType.File

    def iterdir(self) -> Iterator["Location"]:
        """The sub-folders and files directly inside (none if the folder does not exist)."""
        if self.is_local:
            if self.path.is_dir():
                yield from (self / p.name for p in sorted(self.path.iterdir()))
            return
        from pyarrow.fs import FileSelector  # noqa: PLC0415

        fs, key = self._fs()
        for info in sorted(fs.get_file_info(FileSelector(key, allow_not_found=True)), key=lambda i: i.path):
            yield self / info.base_name

    # ---- small files -------------------------------------------------------------
    def read_bytes(self) -> bytes:
        if self.is_local:
            return self.path.read_bytes()
        fs, key = self._fs()
        with fs.open_input_stream(key) as f:
            return f.read()

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def write_json_atomic(self, obj: Any) -> None:
        """Replace the file with ``obj`` as JSON; readers see the old or the new one, whole.

        Local: temporary file, fsync, rename. Object store: one PUT (an object appears
        whole when its upload completes).
        """
        data = json.dumps(obj, indent=1, default=str).encode()
        if self.is_local:
            write_bytes_atomic(self.path, data)
            return
        fs, key = self._fs()
        with fs.open_output_stream(key) as f:
            f.write(data)

    def mkdir(self) -> None:
        """Create the folder (local only; object stores have no folders to make)."""
        if self.is_local:
            self.path.mkdir(parents=True, exist_ok=True)

    def lock_file(self) -> Path:
        """The local file whose ``fcntl`` lock serialises writers of this folder."""
        if self.is_local:
            return self.path / ".lock"
        if self.lock_dir is None:
            raise StorageError(f"no local lock folder for {self.uri}")
        rel = self.uri.split("://", 1)[1].replace("/", "__")
        return self.lock_dir / f"{rel}.lock"

    # ---- Lance -------------------------------------------------------------------
    def lance_dataset(self, version: int | None = None):
        """Open the Lance dataset at this location (``version``: an older Lance version)."""
        import lance  # noqa: PLC0415

        return lance.dataset(self.uri, version=version, storage_options=self.storage_options or None)

    def write_lance(self, data, *, mode: str, **kwargs):
        """``lance.write_dataset`` at this location; returns the new dataset handle."""
        import lance  # noqa: PLC0415

        return lance.write_dataset(data, self.uri, mode=mode, storage_options=self.storage_options or None, **kwargs)

    # ---- pyarrow.fs --------------------------------------------------------------
    def _fs(self):
        return _filesystem(self.uri.split("://", 1)[0], _freeze(self.storage_options)), self.uri.split("://", 1)[1]


def _freeze(opts: dict) -> tuple:
    return tuple(sorted(opts.items()))


@functools.lru_cache(maxsize=8)
def _filesystem(scheme: str, opts: tuple):
    """A ``pyarrow.fs`` filesystem for ``scheme`` configured like Lance (one per option set)."""
    import pyarrow.fs as pafs  # noqa: PLC0415

    o = dict(opts)
    if scheme == "s3":
        endpoint = o.get("aws_endpoint") or o.get("endpoint") or o.get("aws_endpoint_url")
        kwargs = {"access_key": o.get("aws_access_key_id"), "secret_key": o.get("aws_secret_access_key"),
                  "session_token": o.get("aws_session_token"), "region": o.get("aws_region") or o.get("region")}
        if endpoint:
            proto, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or proto, scheme=proto if host else "https")
        return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})
    if scheme == "gs":
        return pafs.GcsFileSystem()
    return pafs.AzureFileSystem(account_name=o.get("account_name") or o.get("azure_storage_account_name", ""))
