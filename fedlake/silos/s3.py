"""The S3 lake: Delta tables (and declared plain Parquet tables) in a bucket, written by delta-rs
and read in place by DuckDB through its httpfs and delta extensions, both with the same endpoint
and credentials.

The extensions come from the `duckdb-extension-httpfs` and `-delta` wheels; DuckDB is told never to
download anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import duckdb
import duckdb_extensions
import pyarrow.fs as pafs

from fedlake.errors import SiloError
from fedlake.silos.delta import DEFAULT_RETENTION_HOURS
from fedlake.silos.lake import LakeConnector


class S3Connector(LakeConnector):
    kind = "s3"

    def __init__(
        self,
        name: str,
        region: str,
        bucket: str,
        prefix: str = "",
        endpoint_url: str = "",
        aws_region: str = "us-east-1",
        access_key_id: str = "",
        secret_access_key: str = "",
        formats: Mapping[str, str] | None = None,
        retention_hours: float = DEFAULT_RETENTION_HOURS,
    ):
        endpoint = urlparse(endpoint_url) if endpoint_url else None
        self._s3 = {
            "key_id": access_key_id,
            "secret": secret_access_key,
            "region": aws_region,
            "endpoint": endpoint.netloc if endpoint else "",
            "use_ssl": not endpoint or endpoint.scheme == "https",
        }
        fs = pafs.S3FileSystem(
            access_key=access_key_id or None,
            secret_key=secret_access_key or None,
            region=aws_region,
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
            allow_bucket_creation=False,
        )
        self._client_settings = {
            "endpoint_url": endpoint_url or None,
            "region_name": aws_region,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
        }
        # delta-rs (object_store) reads the same settings; it commits with conditional puts, which S3 has
        storage_options = {
            key: value
            for key, value in {
                "AWS_ENDPOINT_URL": endpoint_url,
                "AWS_REGION": aws_region,
                "AWS_ACCESS_KEY_ID": access_key_id,
                "AWS_SECRET_ACCESS_KEY": secret_access_key,
                "AWS_ALLOW_HTTP": "true" if endpoint and endpoint.scheme == "http" else "",
            }.items()
            if value
        }
        self._bucket, self._endpoint_url, self._bucket_seen = bucket, endpoint_url, False
        base = "/".join(p for p in (bucket, prefix.strip("/")) if p)
        super().__init__(name, region, fs, base, f"s3://{base}", formats, retention_hours, storage_options)

    def _write(self, table: str, schema, batches, annotations):
        self._require_bucket()
        return super()._write(table, schema, batches, annotations)

    def _require_bucket(self) -> None:
        """A write into a bucket that does not exist fails in one line naming it: fedlake never
        creates buckets (their region, encryption and retention are the data owner's decision)."""
        if self._bucket_seen:
            return
        try:
            found = self._fs.get_file_info(self._bucket).type != pafs.FileType.NotFound
        except OSError as exc:
            raise SiloError(f"silo {self.name}: cannot reach bucket '{self._bucket}' at {self._endpoint_url or 'AWS'}: "
                            f"{str(exc).splitlines()[0]}") from None
        if not found:
            raise SiloError(f"silo {self.name}: bucket '{self._bucket}' does not exist at {self._endpoint_url or 'AWS'}; "
                            "create it first (fedlake never creates buckets)")
        self._bucket_seen = True

    def _discard_partial_uploads(self, table: str) -> None:
        """Abort the multipart uploads that writers killed before the retention period started under
        `table`: their parts are stored (and billed) though no listing shows them. A younger one may
        belong to a write still running."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = self._path(table).partition("/")
        cutoff = datetime.now(timezone.utc) - timedelta(hours=self._delta.retention_hours)
        try:
            client = boto3.client("s3", **self._client_settings)
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/"):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except (BotoCoreError, ClientError) as exc:
            raise OSError(f"aborting the multipart uploads under s3://{bucket}/{key}: {exc}") from exc

    def _configure(self, db: duckdb.DuckDBPyConnection) -> None:
        duckdb_extensions.import_extension("httpfs", con=db)
        db.execute("LOAD httpfs")
        s3 = self._s3
        options = [
            "TYPE s3",
            f"REGION '{s3['region']}'",
            f"USE_SSL {'true' if s3['use_ssl'] else 'false'}",
            "URL_STYLE 'path'",
        ]
        if s3["key_id"]:
            options += [f"KEY_ID '{s3['key_id']}'", f"SECRET '{s3['secret']}'"]
        if s3["endpoint"]:
            options.append(f"ENDPOINT '{s3['endpoint']}'")
        db.execute(f"CREATE OR REPLACE SECRET fedlake_s3 ({', '.join(options)})")
