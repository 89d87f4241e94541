"""An S3-compatible object store (AWS S3, MinIO, Ceph RGW, SeaweedFS, a cloud bucket) as a storage backend.

The client is boto3: the reference S3 SDK, maintained by AWS, which every S3-compatible store tests against;
it reads credentials the standard way (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance
roles) and signs requests itself. A PUT of one object is atomic in S3 (a reader sees the old object or the
whole new one), which is what the journal's commit protocol needs; no rename is used. Timeouts are short and
retries few, so an unreachable store ends an ingest in a retryable `StorageUnavailable` within seconds
instead of hanging it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from videokv.errors import StorageError, StorageFull, StorageUnavailable
from videokv.storage.backend import Backend, Missing

_UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
_FULL_CODES = {"QuotaExceeded", "EntityTooLarge", "InsufficientStorage", "507"}


def _client(endpoint: str | None):
    try:
        import boto3
        import botocore.session
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - the s3 extra is part of the default install
        raise StorageError("an s3:// store needs boto3: pip install 'videokv[s3]'") from e
    config = Config(
        connect_timeout=float(os.environ.get("VIDEOKV_S3_CONNECT_TIMEOUT", 3)),
        read_timeout=float(os.environ.get("VIDEOKV_S3_READ_TIMEOUT", 30)),
        retries={"max_attempts": int(os.environ.get("VIDEOKV_S3_ATTEMPTS", 2)), "mode": "standard"},
        max_pool_connections=16,
    )
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    core = botocore.session.get_session()
    # videokv reads no object's dates: leave them as text (dateutil's parse costs ~20 ms a response here)
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return boto3.session.Session(botocore_session=core).client("s3", endpoint_url=endpoint, config=config)


class S3Backend(Backend):
    """Objects under `s3://bucket/prefix/`."""

    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self._client = client
        self._lock = threading.Lock()
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_url(cls, url: str, endpoint: str | None = None) -> S3Backend:
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"{url!r} names no bucket: use s3://BUCKET/PREFIX")
        return cls(bucket, prefix, endpoint)

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = _client(self.endpoint)
            return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, e: Exception, what: str) -> StorageError:
        from botocore.exceptions import ClientError, NoCredentialsError

        where = f"{what} ({self.url})"
        if isinstance(e, NoCredentialsError):
            return StorageError(
                f"{where}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchBucket",):
                return StorageError(f"{where}: the bucket {self.bucket!r} does not exist; create it first")
            if code in _FULL_CODES:
                return StorageFull(f"{where}: the object store is full ({code}); free space, then retry")
            if code in _UNAVAILABLE_CODES:
                return StorageUnavailable(f"{where}: the object store is busy ({code}); retry in a moment")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"{where}: access denied ({code}): check the credentials")
            return StorageError(f"{where}: {code or e}")
        return StorageUnavailable(
            f"{where}: the object store cannot be reached ({type(e).__name__}); retry when it is back"
        )

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:
            raise self._error(e, f"writing {key}") from e

    def get(self, key: str, cache: bool = False) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
                raise Missing(f"{self.url}/{key} does not exist") from e
            raise self._error(e, f"reading {key}") from e
        except Exception as e:
            raise self._error(e, f"reading {key}") from e

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._error(e, f"looking up {key}") from e
        except Exception as e:
            raise self._error(e, f"looking up {key}") from e

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        if prefix and not full.endswith("/"):
            full += "/"
        if not self.prefix and not prefix:
            full = ""
        cut = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                out += [obj["Key"][cut:] for obj in page.get("Contents", [])]
        except Exception as e:
            raise self._error(e, f"listing {prefix or '/'}") from e
        return out

    def children(self, prefix: str = "") -> list[str]:
        full = self._key(prefix.strip("/")) if prefix else self.prefix
        full = f"{full}/" if full else ""
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            for page in pages:
                out += [p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
                out += [obj["Key"][len(full) :] for obj in page.get("Contents", [])]
        except Exception as e:
            raise self._error(e, f"listing {prefix or '/'}") from e
        return out

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        try:
            for i in range(0, len(keys), 1000):
                batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except Exception as e:
            raise self._error(e, "deleting objects") from e

    def child(self, prefix: str) -> S3Backend:
        return S3Backend(self.bucket, self._key(prefix.strip("/")), self.endpoint, self.client)
