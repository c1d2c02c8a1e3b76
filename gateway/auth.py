"""Who may connect and which topics they may read.

Modes: ``none`` (everyone reads everything; refused on non-loopback addresses unless
``--allow-anonymous``), ``static`` (configured tokens, each with topic grants) and
``jwt`` (HS256 or RS256; ``exp`` required; ``aud``/``iss`` checked when configured;
grants in a claim, ``topics`` by default).

Rules:
* A refusal is an :class:`AuthError` with a short ``reason`` (a metric label) and a
  message safe to send to the client: it never echoes the token.
* Identities (``sub``) containing ``+``, ``#``, ``/`` or NUL are refused, so they can
  never widen a grant pattern.
* An empty grant list means no topics at all.
* Limits (config ``[auth]``): a token longer than ``max_token_bytes`` is refused
  before it is parsed, a JWT with more than ``max_grants`` grants or (when
  ``jwt_max_lifetime_s`` is set) a longer lifetime is refused.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import AuthConfig
from .core.topics import TopicError, validate_filter

__all__ = ["AuthError", "Authenticator", "Identity", "extract_token"]

ANONYMOUS_GRANTS = None  # None: every topic


class AuthError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    grants: tuple[str, ...] | None  # None: every topic
    expires_at: float | None = None  # Unix time; the connection is closed (4001) then
    #: may acknowledge alarms: ``ack = true`` on a static token, the ``jwt_ack_claim``
    #: claim true in a JWT; everyone when auth is ``none`` (loopback development)
    can_ack: bool = False


def extract_token(headers: Iterable[tuple[bytes, bytes]], target: bytes) -> str | None:
    """The token from ``Authorization: Bearer`` or the ``access_token`` query parameter.

    Raises :class:`AuthError` for a malformed Authorization header; returns None
    when neither is present.
    """
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, rest = value.partition(b" ")
            token = rest.strip()
            if scheme.lower() != b"bearer" or not token:
                raise AuthError("malformed", "the Authorization header must be 'Bearer <token>'")
            try:
                return token.decode("ascii")
            except UnicodeDecodeError:
                raise AuthError("malformed", "the token must be ASCII") from None
    _, _, query = target.partition(b"?")
    if query:
        try:
            params = urllib.parse.parse_qs(
                query.decode("ascii"), keep_blank_values=True, max_num_fields=50
            )
        except (UnicodeDecodeError, ValueError):
            raise AuthError("malformed", "the query string is malformed") from None
        values = params.get("access_token")
        if values:
            if not values[0]:
                raise AuthError("malformed", "access_token is empty")
            return values[0]
    return None


class Authenticator:
    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg
        self.required = cfg.mode != "none"
        self._static = {
            hashlib.sha256(t.token.encode()).digest(): t for t in cfg.tokens
        }  # looked up by digest: no timing signal about the token's characters
        self._key: str | bytes = ""
        if cfg.mode == "jwt":
            # PyJWT (and cryptography) only for JWT: the imports are a tenth of
            # every other start-up, the time screens wait during a restart
            import jwt  # noqa: F401

            if "RS256" in cfg.jwt_algorithms:
                self._key = Path(cfg.jwt_public_key_file).read_bytes()
            else:
                self._key = cfg.jwt_secret

    def verify(self, token: str, now: float) -> Identity:
        if self.cfg.mode == "none":
            return Identity("anonymous", ANONYMOUS_GRANTS, can_ack=True)
        if len(token) > self.cfg.max_token_bytes:
            raise AuthError("malformed", "the token is too long")
        if self.cfg.mode == "static":
            entry = self._static.get(hashlib.sha256(token.encode()).digest())
            if entry is None:
                raise AuthError("invalid", "unknown token")
            return Identity(entry.name, entry.grants, can_ack=entry.ack)
        return self._verify_jwt(token, now)

    def _verify_jwt(self, token: str, now: float) -> Identity:
        import jwt  # imported at start already (__init__)

        cfg = self.cfg
        required = ["exp"]
        if cfg.jwt_audience:
            required.append("aud")
        if cfg.jwt_issuer:
            required.append("iss")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=list(cfg.jwt_algorithms),
                audience=cfg.jwt_audience or None,
                issuer=cfg.jwt_issuer or None,
                leeway=cfg.jwt_leeway_s,
                options={"require": required, "verify_aud": bool(cfg.jwt_audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid", "the token is not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise AuthError("audience", "the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("issuer", "the token has another issuer") from None
        except jwt.MissingRequiredClaimError as err:
            raise AuthError("claims", f"the token lacks the {err.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("algorithm", "the token's algorithm is not allowed") from None
        except jwt.InvalidSignatureError:
            raise AuthError("signature", "the token's signature is wrong") from None
        except jwt.InvalidTokenError:
            raise AuthError("malformed", "the token is malformed") from None
        except Exception:  # a key or library fault must read as a refusal, not a crash
            raise AuthError("malformed", "the token could not be verified") from None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("claims", "exp must be a number")
        if cfg.jwt_max_lifetime_s:
            iat = claims.get("iat")
            born = iat if isinstance(iat, int | float) and not isinstance(iat, bool) else now
            if exp - min(born, now) > cfg.jwt_max_lifetime_s + cfg.jwt_leeway_s:
                raise AuthError(
                    "lifetime", f"the token may live at most {cfg.jwt_max_lifetime_s:g} s"
                )
        sub = claims.get("sub", "jwt")
        if not isinstance(sub, str) or not sub or any(c in sub for c in "+#/\x00"):
            raise AuthError("identity", "the subject must not contain '+', '#', '/' or NUL")
        raw = claims.get(cfg.jwt_grants_claim, [])
        if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
            raise AuthError(
                "grants", f"the {cfg.jwt_grants_claim!r} claim must be a list of filters"
            )
        if len(raw) > cfg.max_grants:
            raise AuthError("grants", f"a token may carry at most {cfg.max_grants} grants")
        try:
            grants = tuple(validate_filter(g) for g in raw)
        except TopicError:
            raise AuthError("grants", "a grant is not a valid topic filter") from None
        can_ack = claims.get(cfg.jwt_ack_claim) is True
        return Identity(sub, grants, float(exp) + cfg.jwt_leeway_s, can_ack)
