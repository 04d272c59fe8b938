"""Bearer-token authentication (static API tokens and JWTs) and per-route scopes.

Static tokens are stored as sha256 hashes: the presented token is hashed and compared with every stored
hash in constant time, so neither the config nor the timing reveals a token. A token is random and long
(see the config's description), so a fast hash is enough; a password hash would only cost latency.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from types import ModuleType

from recyclex_edge.config.http import AuthConfig, Scope

ALL_SCOPES: frozenset[str] = frozenset({"predict", "label", "admin"})


@dataclass(frozen=True)
class Identity:
    """Who is calling. `subject` is None for an anonymous caller; `problem` says why a token was refused."""

    subject: str | None
    scopes: frozenset[str]
    problem: str | None = None

    def allows(self, scope: Scope | None) -> bool:
        """`None` means any authenticated caller; 'admin' may do everything."""
        if self.subject is None:
            return False
        return scope is None or scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Identity(None, frozenset())
# With authentication switched off every caller is this one (the rate limit then keys on the address).
EVERYONE = Identity(None, ALL_SCOPES)


@dataclass(frozen=True)
class RoutePolicy:
    """What a route needs: a scope (None: any valid token), unless it is public; and its rate bucket."""

    scope: Scope | None
    public: bool
    bucket: str


def _scopes_from_claim(value: object) -> frozenset[str]:
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, list):
        names = [item for item in value if isinstance(item, str)]
    else:
        names = []
    return frozenset(names) & ALL_SCOPES


class Authenticator:
    """Turns an Authorization header into an Identity. Never raises: refusals carry a `problem`."""

    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self._tokens = [(token.sha256, token.name, frozenset(token.scopes)) for token in config.tokens]
        self._jwt = config.jwt if config.jwt.configured else None
        self._scope_claim = config.scope_claim
        # PyJWT (and the cryptography it loads, ~10 MiB resident) only for a bin that accepts JWTs.
        self._jwt_module: ModuleType | None = None
        self._jwt_key: str | None = None
        if self._jwt is not None:
            import jwt

            self._jwt_module = jwt
            secret = self._jwt.secret
            self._jwt_key = secret.get_secret_value() if secret is not None else self._jwt.public_key

    @property
    def has_credentials(self) -> bool:
        return bool(self._tokens) or self._jwt is not None

    def identify(self, authorization: str | None) -> Identity:
        if not self.enabled:
            return EVERYONE
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Identity(None, frozenset(), "use 'Authorization: Bearer <token>'")
        static = self._static(token)
        if static is not None:
            return static
        if self._jwt is not None and token.count(".") == 2:
            return self._from_jwt(token)
        return Identity(None, frozenset(), "the token is not valid")

    def _static(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        found: Identity | None = None
        # Compare with every stored hash, without stopping at a match, so timing says nothing.
        for stored, name, scopes in self._tokens:
            if hmac.compare_digest(digest, stored):
                found = Identity(f"token:{name}", scopes)
        return found

    def _from_jwt(self, token: str) -> Identity:
        assert self._jwt is not None and self._jwt_key is not None and self._jwt_module is not None
        jwt = self._jwt_module
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=[self._jwt.algorithm],
                audience=self._jwt.audience,
                issuer=self._jwt.issuer,
                leeway=self._jwt.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self._jwt.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return Identity(None, frozenset(), "the token has expired; get a new one")
        except jwt.InvalidTokenError as error:
            return Identity(None, frozenset(), f"the token is not valid: {error}")
        return Identity(f"jwt:{claims['sub']}", _scopes_from_claim(claims.get(self._scope_claim)))
