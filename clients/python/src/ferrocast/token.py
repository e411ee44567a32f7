"""Client tokens: HS256 JWTs signed with the node's ``auth.token_secret`` (stdlib only)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any, Iterable, Optional, Union

Ttl = Union[int, float, timedelta, None]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _seconds(ttl: Ttl) -> Optional[int]:
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    if ttl < 0:
        raise ValueError("ttl must not be negative")
    return None if ttl == 0 else int(ttl)


def make_token(
    secret: Union[str, bytes],
    user_id: Any,
    ttl: Ttl = 3600,
    channels: Optional[Iterable[str]] = None,
    info: Any = None,
    *,
    subs: Optional[Iterable[str]] = None,
    now: Optional[float] = None,
) -> str:
    """Mints a client token the node accepts (``?token=`` or the ``connect`` command).

    ``user_id`` becomes the ``sub`` claim (converted with ``str``; ``""`` or ``None`` = anonymous).
    ``ttl`` is the lifetime in seconds or a ``timedelta``; ``0`` or ``None`` gives a token
    without ``exp`` (it never expires). ``channels`` lists extra channels the token may subscribe
    to (private namespaces, other users' personal channels); ``info`` is any JSON value, shown
    in presence. ``subs`` lists channels the node subscribes the connection to itself when it
    authenticates (server-side subscriptions: the client gets a ``subscribe`` push for each,
    no ``subscribe`` command needed); they are permitted to it as well.
    """
    if not secret:
        raise ValueError("secret must not be empty")
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    claims: dict = {"sub": "" if user_id is None else str(user_id)}
    seconds = _seconds(ttl)
    if seconds is not None:
        claims["exp"] = int(now if now is not None else time.time()) + seconds
    if channels is not None:
        chans = [channels] if isinstance(channels, str) else list(channels)
        claims["channels"] = [str(c) for c in chans]
    if subs is not None:
        chans = [subs] if isinstance(subs, str) else list(subs)
        claims["subs"] = [str(c) for c in chans]
    if info is not None:
        claims["info"] = info
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode("utf-8"))
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    )
    sig = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def decode_token(token: str, secret: Union[str, bytes, None] = None) -> dict:
    """Returns the claims of ``token``. With ``secret``, checks the HS256 signature first and
    raises ``ValueError`` when it doesn't match (expiry is not checked). Handy in tests."""
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
    except ValueError:
        raise ValueError("not a compact JWT") from None

    def unb64(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    if secret is not None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        header = json.loads(unb64(head_b64))
        if header.get("alg") != "HS256":
            raise ValueError("not an HS256 token")
        want = hmac.new(key, f"{head_b64}.{claims_b64}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(want, unb64(sig_b64)):
            raise ValueError("bad signature")
    return json.loads(unb64(claims_b64))
