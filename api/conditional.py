"""JSON answers with an ETag, and 304 Not Modified for a poller whose copy is current.

A dashboard polling a job sends back the ETag it got (browsers do it by themselves, told
`no-cache`): an unchanged job costs the same database read but no body on the wire.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Header
from fastapi.responses import Response

IfNoneMatch = Header(
    alias="If-None-Match",
    max_length=1024,
    description="ETags of copies the client has; 304 with no body when one is current",
)

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the ETag in If-None-Match is current"}
}


def etag(body: bytes) -> str:
    """A weak validator of a JSON body (weak: gzip in front of us changes the bytes)."""
    # SHA-256: 34 us for a 60 KB page of jobs on these CPUs, where BLAKE2b took 87 (6% of
    # a list request)
    return 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 weak comparison of `tag` against an If-None-Match list (or `*`)."""
    if not if_none_match:
        return False
    opaque = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False


def json_or_not_modified(body: bytes, if_none_match: str | None) -> Response:
    """200 with the body and its ETag, or 304 when the client's copy is this one."""
    tag = etag(body)
    # private: answers depend on who asks; no-cache: a cached copy is checked every time
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    if matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
