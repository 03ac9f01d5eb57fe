"""Where manifests come from and reports go: a local path or an ``s3://bucket/key`` URI."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from healthimaging.bulk.manifest_reader import check_size


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def read_bytes(uri: str, aws_conn_id: str | None = "aws_default", *, max_bytes: int | None = None) -> bytes:
    """The bytes of a local file or an S3 object; errors name the location and what to check. With
    ``max_bytes``, a larger object is refused from its size (a ``ManifestError``) before it is read."""
    if is_s3(uri):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, key = split_s3(uri)
        hook = S3Hook(aws_conn_id=aws_conn_id)
        if not hook.check_for_key(key, bucket_name=bucket):
            raise FileNotFoundError(f"manifest {uri} does not exist (or connection {aws_conn_id!r} cannot see it)")
        obj = hook.get_key(key, bucket_name=bucket)
        if max_bytes is not None:
            check_size(obj.content_length, max_bytes)
        return obj.get()["Body"].read()
    path = Path(uri).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {uri} is not a file on this worker; give an absolute path the workers can read, or an s3:// URI"
        )
    if max_bytes is not None:
        check_size(path.stat().st_size, max_bytes)
    return path.read_bytes()


def write_next_to(
    manifest_uri: str, folder_name: str, files: dict[str, str], aws_conn_id: str | None = "aws_default"
) -> str | None:
    """Upload report files beside an S3 manifest (``<manifest prefix>/<folder_name>/``); None for a local manifest."""
    if not is_s3(manifest_uri):
        return None
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, key = split_s3(manifest_uri)
    prefix = str(PurePosixPath(key).parent / folder_name).lstrip("./")
    hook = S3Hook(aws_conn_id=aws_conn_id)
    for name, content in files.items():
        hook.load_string(content, key=f"{prefix}/{name}", bucket_name=bucket, replace=True)
    return f"s3://{bucket}/{prefix}/"
