"""Users and API tokens: creation, authentication, revocation."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.errors import Conflict, DomainError, InvalidInput, NotFound
from shared.models import ApiToken, User

TOKEN_PREFIX = "dgt_"
NAME_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")  # DIGITS's username rule


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


def hash_token(token: str) -> str:
    """SHA-256 of a token (tokens are 256-bit random, so a fast hash is the right one)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, name: str, *, is_admin: bool = False) -> User:
    """A new user; names follow DIGITS's rule (lower case, digits, . _ -)."""
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"user name {name!r} must start with a letter and use a-z, 0-9, '.', '_' or '-'",
            code="invalid_user_name",
        )
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} exists", code="user_exists")
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    session.flush()
    return user


def get_user_by_name(session: Session, name: str) -> User:
    """The user, or NotFound."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"user {name!r} does not exist", code="user_not_found")
    return user


def create_token(session: Session, user: User, name: str = "default") -> tuple[ApiToken, str]:
    """A new token for `user`; returns the row and the token, which is not stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id, name=name[:100], token_hash=hash_token(token), prefix=token[:12]
    )
    session.add(row)
    session.flush()
    return row, token


# token hash -> (expiry on the monotonic clock, user): the lookup costs two database round
# trips, paid once per token every CACHE_SECONDS. A revocation through this process takes
# effect at once; through another API process, within CACHE_SECONDS.
CACHE_SECONDS = 10.0
_cache: dict[str, tuple[float, User]] = {}
_cache_lock = threading.Lock()


def _digest(authorization: str | None) -> str:
    """The hash of a well-formed bearer token; 401 for a missing or malformed header."""
    if not authorization:
        raise Unauthorized(
            "send `Authorization: Bearer <token>`; create one with `digits token create USER`",
            code="missing_token",
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or " " in token:
        raise Unauthorized(
            "the Authorization header must be `Bearer dgt_...`", code="malformed_token"
        )
    return hash_token(token)


def cached_user(authorization: str | None) -> User | None:
    """The user of a token checked within CACHE_SECONDS, without the database; None on a miss
    (the API's gate asks this first, on the event loop, and goes to a thread only on a miss)."""
    digest = _digest(authorization)
    with _cache_lock:
        hit = _cache.get(digest)
    return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def authenticate(session: Session, authorization: str | None) -> User:
    """The user of an `Authorization: Bearer` header; 401 for missing, malformed or revoked."""
    digest = _digest(authorization)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    found = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == digest)
    ).first()
    if found is None:
        raise Unauthorized("unknown token", code="invalid_token")
    row, user = found
    if row.revoked_at is not None:
        raise Unauthorized("this token was revoked", code="revoked_token")
    if user.disabled:
        raise Unauthorized("this token's user is disabled", code="invalid_token")
    stamp = utcnow()
    last = row.last_used_at
    if (
        last is None
        or (stamp - (last if last.tzinfo else last.replace(tzinfo=stamp.tzinfo))).total_seconds()
        > 60
    ):
        row.last_used_at = stamp  # at most once a minute: no write per request
    # a transient copy: bound to no session, so no commit or rollback anywhere expires it
    principal = User(
        id=user.id,
        name=user.name,
        is_admin=user.is_admin,
        disabled=user.disabled,
        created_at=user.created_at,
    )
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (now + CACHE_SECONDS, principal)
    return principal


def forget_token(token_hash: str) -> None:
    """Drop a token from this process's cache (after a revocation)."""
    with _cache_lock:
        _cache.pop(token_hash, None)


def list_tokens(session: Session, user: User) -> list[ApiToken]:
    """The user's tokens (never the secrets)."""
    return list(
        session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at)
        )
    )


def revoke_token(session: Session, user: User, token_id: uuid.UUID) -> ApiToken:
    """Revoke one of the user's tokens (an admin may revoke any)."""
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != user.id and not user.is_admin):
        raise NotFound(f"token {token_id} does not exist", code="token_not_found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    forget_token(row.token_hash)
    return row


def ensure_admin(session: Session) -> str | None:
    """On a fresh install, create user `admin` and return its first token (else None)."""
    if session.scalar(select(func.count()).select_from(User)):
        return None
    admin = create_user(session, "admin", is_admin=True)
    _, token = create_token(session, admin, "first start")
    return token
