"""Browser sessions: the session cookie as a credential, and the same-origin check (CSRF)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from shared.errors import Forbidden

COOKIE = "digits_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(request: Request) -> bool | None:
    """True/False when the browser said where the request came from, None when it did not."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        # "none" is a navigation the user typed; same-site and cross-site are other origins
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return None if origin is None else False
    return urlsplit(origin).netloc == request.headers.get("host", "")


def check_same_origin(request: Request, *, required: bool) -> None:
    """403 when the request comes from another site (or, if `required`, says nothing)."""
    verdict = same_origin(request)
    if verdict is True or (verdict is None and not required):
        return
    raise Forbidden(
        "a request authenticated by the browser session must come from this site "
        "(Origin or Sec-Fetch-Site: same-origin); scripts send `Authorization: Bearer`",
        code="cross_site_request",
    )


def authorization(request: Request) -> str | None:
    """The request's credentials as an Authorization value: the header, else the session cookie.

    A cookie rides along with any request the browser sends, including one a hostile page
    makes it send, so an unsafe method authenticated by the cookie alone must prove it comes
    from our own pages (SameSite=Strict already keeps the cookie off cross-site requests in
    current browsers; the check also covers older ones and same-site subdomains).
    """
    header = request.headers.get("authorization")
    if header:
        return header
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    if request.method not in SAFE_METHODS:
        check_same_origin(request, required=True)
    return f"Bearer {token}"
