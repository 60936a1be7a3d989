"""A real S3 protocol server for tests: moto's standalone server, as a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.support import free_port

ACCESS_KEY = "digits-test"
SECRET_KEY = "digits-test-secret"
REGION = "us-east-1"


class MotoServer:
    """moto's S3 server on `host:port`; `prefix` runs it elsewhere (e.g. `ip netns exec A`)."""

    def __init__(
        self,
        log: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.log = log
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "moto.server",
                    "-H",
                    self.host,
                    "-p",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until it answers (from this process's network namespace)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("moto server exited:\n" + self.log.read_text()[-3000:])
            with contextlib.suppress(OSError, httpx.HTTPError):
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                httpx.get(self.endpoint + "/moto-api/", timeout=2)
                return
            time.sleep(0.1)
        raise RuntimeError("moto server did not start:\n" + self.log.read_text()[-3000:])

    def create_bucket(self, name: str) -> None:
        """Create a bucket (operators create theirs; the service never does)."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket=name)
        client.close()

    def env(self, bucket: str, prefix: str = "digits") -> dict[str, str]:
        """The DIGITS_STORAGE_* settings that point a process at `bucket/prefix`."""
        return {
            "DIGITS_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "DIGITS_STORAGE_ENDPOINT": self.endpoint,
            "DIGITS_STORAGE_REGION": REGION,
            "DIGITS_STORAGE_ACCESS_KEY_ID": ACCESS_KEY,
            "DIGITS_STORAGE_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
