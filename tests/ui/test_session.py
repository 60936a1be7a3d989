"""The browser session over REST: the cookie, the same-origin check, the UI's headers."""

from __future__ import annotations

import httpx

from tests.support import Stack


def _session(stack: Stack) -> httpx.Client:
    client = httpx.Client(base_url=stack.url, timeout=30)
    resp = client.post(
        "/api/v1/session", json={"token": stack.token}, headers={"Origin": stack.url}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "admin"
    return client


def test_a_session_cookie_is_httponly_strict_and_authenticates(ui_stack: Stack) -> None:
    client = _session(ui_stack)
    cookie = client.cookies.jar._cookies  # type: ignore[attr-defined]
    header = httpx.post(ui_stack.url + "/api/v1/session", json={"token": ui_stack.token}).headers[
        "set-cookie"
    ]
    print("Set-Cookie:", header.split("=", 1)[0], "...", header.split(";", 1)[1])
    assert "HttpOnly" in header
    assert "SameSite=strict" in header.replace("Strict", "strict")
    assert "Path=/" in header
    assert cookie
    assert client.get("/api/v1/users/me").json()["name"] == "admin"
    client.close()


def test_a_wrong_token_gets_no_cookie(ui_stack: Stack) -> None:
    resp = httpx.post(ui_stack.url + "/api/v1/session", json={"token": "dgt_nope"})
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert "set-cookie" not in resp.headers


def test_cookie_writes_need_a_same_origin_request(ui_stack: Stack) -> None:
    """CSRF: an unsafe method authenticated by the cookie alone must come from our pages."""
    client = _session(ui_stack)
    body = {"name": "csrf-probe"}
    answers = {
        "no origin": client.post("/api/v1/tokens", json=body).status_code,
        "other origin": client.post(
            "/api/v1/tokens", json=body, headers={"Origin": "http://evil.example"}
        ).status_code,
        "cross-site fetch": client.post(
            "/api/v1/tokens", json=body, headers={"Sec-Fetch-Site": "cross-site"}
        ).status_code,
        "same origin": client.post(
            "/api/v1/tokens", json=body, headers={"Origin": ui_stack.url}
        ).status_code,
        "same-origin fetch": client.post(
            "/api/v1/tokens", json=body, headers={"Sec-Fetch-Site": "same-origin"}
        ).status_code,
    }
    print("cookie POST /tokens:", answers)
    assert answers == {
        "no origin": 403,
        "other origin": 403,
        "cross-site fetch": 403,
        "same origin": 201,
        "same-origin fetch": 201,
    }
    # a bearer token is not a browser credential: no origin needed
    with ui_stack.client() as bearer:
        assert bearer.post("/tokens", json=body).status_code == 201
    assert client.get("/api/v1/jobs").status_code == 200  # reads need no origin
    client.close()


def test_deleting_the_session_clears_the_cookie(ui_stack: Stack) -> None:
    client = _session(ui_stack)
    resp = client.delete("/api/v1/session", headers={"Origin": ui_stack.url})
    assert resp.status_code == 204
    assert "Max-Age=0" in resp.headers["set-cookie"] or "expires" in resp.headers["set-cookie"]
    assert client.get("/api/v1/users/me").status_code == 401
    assert client.get("/api/v1/session").json() == {"user": None}  # a question, not a 401
    client.close()


def test_get_session_names_the_signed_in_user(ui_stack: Stack) -> None:
    client = _session(ui_stack)
    assert client.get("/api/v1/session").json()["user"]["name"] == "admin"
    assert httpx.get(ui_stack.url + "/api/v1/session").json() == {"user": None}
    client.close()


def test_the_ui_shell_is_served_with_a_strict_csp_and_revalidates(ui_stack: Stack) -> None:
    for path in ("/", "/jobs/123", "/compare?jobs=a,b", "/login", "/settings"):
        resp = httpx.get(ui_stack.url + path)
        assert resp.status_code == 200, path
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="/ui/app/main.js">' in resp.text
    first = httpx.get(ui_stack.url + "/ui/app/main.js", headers={"Accept-Encoding": "gzip"})
    assert first.headers["cache-control"] == "no-cache"
    assert first.headers["content-encoding"] == "gzip"
    again = httpx.get(
        ui_stack.url + "/ui/app/main.js", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    shell = httpx.get(ui_stack.url + "/")
    assert (
        httpx.get(ui_stack.url + "/", headers={"If-None-Match": shell.headers["etag"]}).status_code
        == 304
    )
    with ui_stack.client() as client:  # the API keeps its own 404s under /api
        assert client.get("/nope").status_code == 404


def test_docs_come_from_our_own_files(ui_stack: Stack) -> None:
    for path, script in (
        ("/docs", "/ui/vendor/swagger-ui-bundle.js"),
        ("/redoc", "/ui/vendor/redoc.standalone.js"),
    ):
        page = httpx.get(ui_stack.url + path)
        assert page.status_code == 200
        assert script in page.text
        assert "cdn" not in page.text.lower()
        assert httpx.get(ui_stack.url + script).status_code == 200
