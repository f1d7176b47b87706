"""OIDC token validation: is this token from an issuer we trust, for us, and still good?

A token names its issuer (``iss``); only the issuers in the configuration are trusted, each
with its own keys, audiences and algorithm allowlist. The checks run in an order that never
lets an attacker choose how a token is verified: the header's ``alg`` must be on the issuer's
allowlist before any key is looked at (so ``none`` and ``HS256`` are refused by name, and a
public key can never be used as an HMAC secret), the key is the issuer's published key for the
token's ``kid``, and its type must fit the algorithm. Only then does pyjwt verify the
signature, with exactly that one algorithm, and the claims; an issuer with ``allow_clients``
also needs the client the token was issued to on its list.

Before all of that, a token over ``MAX_TOKEN`` characters is refused unread, and every
refusal quotes only the start of what a token says (``limits.shown``): a token is the
caller's to make up, sizes and all.

Keys come from the issuer's discovery document and JWKS, fetched over HTTP with a bounded
timeout and size, and cached. An unknown ``kid`` refreshes the JWKS (the issuer rotated its
keys), at most once a second whatever the number of callers, and while the issuer is down the
cached keys keep serving: an identity provider outage must not stop the tokens already out
there from working.

The times (``exp``, ``nbf``, ``iat``) are checked here against the validator's own clock, not
pyjwt's, so that they can be tested and so that each failure says which time was wrong.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from appliance.config import IssuerSettings
from appliance.identity.limits import MAX_TOKEN, shown
from appliance.model import Identity

MAX_RESPONSE = 1024 * 1024
"""Bytes read at most from an issuer's answer: a discovery document or JWKS is a few KiB."""

REFRESH_INTERVAL = 1.0
"""Seconds between two fetches of one issuer's keys, however many tokens ask for a refresh."""

# The key type (and curve) each asymmetric algorithm needs. Symmetric algorithms are absent on
# purpose: an issuer's keys are public, so an HMAC "secret" taken from them is no secret.
KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


# pyjwt takes cryptography key objects, though older releases annotate ``key`` as ``str``.
_decode: Callable[..., dict[str, Any]] = jwt.decode


class TokenError(Exception):
    """A token is rejected. The message says why, for the person whose token it is."""


class ProviderError(Exception):
    """An issuer could not be reached or answered nonsense. The message names the URL."""


Fetch = Callable[[str, float], dict[str, Any]]
"""GET a URL as a JSON object, within a timeout in seconds; raise ProviderError otherwise."""


def _seconds(timeout: float) -> str:
    return f"{timeout:g} s"


def http_json(
    url: str, timeout: float, form: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """GET (or POST ``form`` to) ``url`` and read a JSON object, whatever the HTTP status.

    The whole exchange is bounded by ``timeout``: the socket timeout covers connecting and
    each read, and reading stops at the deadline, so an issuer that trickles bytes cannot hold
    a worker thread. Answers over ``MAX_RESPONSE`` bytes are refused. Error statuses are
    returned with their body, since OAuth endpoints explain themselves in a JSON body on 400.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ProviderError(f"identity provider {url} is not an http(s) URL")
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    headers = {"Accept": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (checked)
    deadline = time.monotonic() + timeout
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (checked)
            status = int(response.status)
        except urllib.error.HTTPError as exc:
            response, status = exc, exc.code
        with response:
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_RESPONSE:
                    raise ProviderError(
                        f"identity provider {url} answered with more than {MAX_RESPONSE} bytes"
                    )
                chunks.append(chunk)
    except ProviderError:
        raise
    except TimeoutError as exc:
        raise ProviderError(
            f"identity provider {url} unreachable: timed out after {_seconds(timeout)}"
        ) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            why = f"timed out after {_seconds(timeout)}"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror.lower()
        else:
            why = str(reason)
        raise ProviderError(f"identity provider {url} unreachable: {why}") from exc
    except OSError as exc:
        raise ProviderError(f"identity provider {url} unreachable: {exc}") from exc
    body = b"".join(chunks)
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ProviderError(
            f"identity provider {url} answered HTTP {status} with something that is not JSON"
        ) from exc
    if not isinstance(document, dict):
        raise ProviderError(f"identity provider {url} answered with JSON that is not an object")
    return status, document


def fetch_json(url: str, timeout: float) -> dict[str, Any]:
    """The default ``Fetch``: GET ``url``; anything but HTTP 200 with a JSON object fails."""
    status, document = http_json(url, timeout)
    if status != 200:
        raise ProviderError(f"identity provider {url} answered HTTP {status}")
    return document


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


@dataclass(frozen=True)
class Key:
    """One of an issuer's published signing keys, read from its JWK."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    public: PublicKey


def _integer(jwk: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_bytes(jwk, name), "big")


def _bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"no {name!r}")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _read_jwk(jwk: Mapping[str, Any]) -> Key:
    """The public key in a JWK (RSA, EC on a NIST curve, or Ed25519/Ed448); ValueError if not."""
    kty, crv, alg, kid = jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("kid")
    public: PublicKey
    if kty == "RSA":
        public = rsa.RSAPublicNumbers(_integer(jwk, "e"), _integer(jwk, "n")).public_key()
    elif kty == "EC" and isinstance(crv, str) and crv in _CURVES:
        curve = _CURVES[crv]
        point = b"\x04" + _bytes(jwk, "x") + _bytes(jwk, "y")
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    elif kty == "OKP" and crv == "Ed25519":
        public = ed25519.Ed25519PublicKey.from_public_bytes(_bytes(jwk, "x"))
    elif kty == "OKP" and crv == "Ed448":
        public = ed448.Ed448PublicKey.from_public_bytes(_bytes(jwk, "x"))
    else:
        raise ValueError(f"unsupported key type {kty!r} {crv or ''}".strip())
    return Key(
        kid=kid if isinstance(kid, str) else None,
        kty=str(kty),
        crv=crv if isinstance(crv, str) else None,
        alg=alg if isinstance(alg, str) else None,
        public=public,
    )


def _parse_jwks(url: str, document: dict[str, Any]) -> dict[str | None, Key]:
    """The signing keys of a JWKS, by kid.

    Keys for encryption, symmetric keys and keys that cannot be read are left out rather than
    failing the set: one odd key must not make an issuer's other keys unusable.
    """
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise ProviderError(f"identity provider {url} answered a JWKS with no 'keys' list")
    usable: dict[str | None, Key] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = _read_jwk(jwk)
        except ValueError:
            continue
        usable[key.kid] = key
    return usable


class IssuerKeys:
    """One issuer's discovery document and its keys, fetched on demand and cached.

    Thread-safe: the daemon validates from worker threads. Fetches happen under a lock of
    their own, so concurrent callers that miss the same kid wait for one fetch instead of
    each making one, and callers that find their key in the cache are never held up by a
    fetch. A failed fetch is remembered for ``REFRESH_INTERVAL`` too, so that an issuer that
    is down costs one timeout a second, not one per token.
    """

    def __init__(
        self,
        settings: IssuerSettings,
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.monotonic,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self.settings = settings
        self._fetch = fetch
        self._clock = clock
        self._interval = refresh_interval
        self._state = threading.Lock()
        self._fetching = threading.Lock()
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str | None, Key] | None = None
        self._generation = 0
        """Counts completed fetch attempts, so that a caller who waited knows one happened."""
        self._attempted: float | None = None
        self._error: ProviderError | None = None
        self.fetches = 0
        """How many times the JWKS was fetched (for tests and ``witness status``)."""

    def discovery(self) -> dict[str, Any]:
        """The issuer's discovery document, fetched once; its ``issuer`` must be ours exactly."""
        with self._state:
            if self._discovery is not None:
                return self._discovery
        with self._fetching:
            with self._state:
                if self._discovery is not None:
                    return self._discovery
            self._discover()
            assert self._discovery is not None
            return self._discovery

    def _discover(self) -> None:
        # Called with self._fetching held.
        url = self.settings.discovery_url
        document = self._fetch(url, self.settings.timeout)
        said = document.get("issuer")
        if said != self.settings.issuer:
            raise ProviderError(
                f"identity provider {url} says its issuer is {shown(said)}, but the configuration "
                f"trusts {self.settings.issuer!r}: they must be the same exactly"
            )
        if not isinstance(document.get("jwks_uri"), str):
            raise ProviderError(f"identity provider {url} has no jwks_uri")
        with self._state:
            self._discovery = document

    def endpoint(self, name: str) -> str | None:
        """An endpoint from the discovery document (e.g. ``token_endpoint``), if it has it."""
        value = self.discovery().get(name)
        return value if isinstance(value, str) and value else None

    def cached(self) -> dict[str | None, Key]:
        """The keys as last fetched (empty before the first fetch)."""
        with self._state:
            return dict(self._keys or {})

    def key(self, kid: str | None) -> Key:
        """The key for ``kid``, refreshing the keys once if it is not known.

        ``kid`` None (a token without one) takes the only key if the issuer publishes exactly
        one: with several, which one was meant cannot be known.
        """
        # The fetch count is read before the lookup: if a fetch completes in between, the
        # refresh below knows the miss is older than it, and looks again instead of fetching.
        with self._state:
            generation = self._generation
        found = self._lookup(kid)
        if found is not None:
            return found
        self.refresh(since=generation)
        found = self._lookup(kid)
        if found is not None:
            return found
        with self._state:
            error, keys = self._error, self._keys
        if keys is None and error is not None:
            raise error
        if error is not None:
            raise ProviderError(
                f"token key id {shown(kid)} is not in the cached keys of "
                f"{self.settings.issuer}, and they could not be refreshed: {error}"
            )
        if kid is None:
            raise TokenError(
                f"token rejected: it has no key id, and the issuer publishes {len(keys or {})} keys"
            )
        raise TokenError(
            f"token rejected: unknown key id {shown(kid)} (not in the issuer's keys, even after "
            "refreshing them)"
        )

    def _lookup(self, kid: str | None) -> Key | None:
        with self._state:
            if self._keys is None:
                return None
            if kid is None:
                return next(iter(self._keys.values())) if len(self._keys) == 1 else None
            return self._keys.get(kid)

    def refresh(self, since: int | None = None) -> bool:
        """Fetch the keys again, unless that was tried less than ``REFRESH_INTERVAL`` ago.

        ``since`` is the fetch count the caller saw before it decided to refresh: if a fetch
        completed after that (another thread did it while this one waited), there is nothing
        more to do. Returns whether a fetch was made. A failure is kept (and raised by
        ``key``) but the cached keys stay.
        """
        with self._fetching:
            with self._state:
                if since is not None and self._generation != since:
                    return False
                now = self._clock()
                if self._attempted is not None and now - self._attempted < self._interval:
                    return False
                self._attempted = now
            try:
                if self._discovery is None:
                    self._discover()
                assert self._discovery is not None
                url = str(self._discovery["jwks_uri"])
                self.fetches += 1
                keys = _parse_jwks(url, self._fetch(url, self.settings.timeout))
            except ProviderError as exc:
                with self._state:
                    self._error = exc
                    self._generation += 1
                return True
            with self._state:
                self._keys = keys
                self._error = None
                self._generation += 1
            return True


@dataclass(frozen=True)
class Validated:
    """A token that passed every check, and what it says."""

    identity: Identity
    expires: float
    issued_at: float
    not_before: float | None
    token_id: str | None
    key_id: str | None
    algorithm: str
    issuer_name: str


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"token rejected: the {name!r} claim is not a number of seconds")
    return float(value)


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenError(
            f"token rejected: the {name!r} claim must be a string, not {type(value).__name__}"
        )
    return value


def _groups(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise TokenError(
        f"token rejected: the {name!r} claim must be a list of strings, "
        f"not {shown(value, json.dumps)}"
    )


def _client(claims: Mapping[str, Any]) -> str | None:
    """The client a token was issued to: ``azp`` (OpenID Connect), else ``client_id``
    (RFC 9068). A token that names two different ones is refused rather than believed."""
    azp, client_id = _text(claims, "azp"), _text(claims, "client_id")
    if azp and client_id and azp != client_id:
        raise TokenError(
            f"token rejected: it names two clients, {shown(azp)} (azp) and {shown(client_id)} "
            "(client_id)"
        )
    return azp or client_id or None


class Validator:
    """Validates tokens from the configured issuers; safe to share between threads."""

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for issuer in issuers:
            unsupported = [alg for alg in issuer.algorithms if alg not in KEY_TYPES]
            if unsupported:
                raise ValueError(
                    f"issuer {issuer.name!r}: algorithm {', '.join(unsupported)} cannot be "
                    f"used (supported: {', '.join(KEY_TYPES)}); symmetric algorithms never can"
                )
        self._clock = clock
        self._by_issuer: dict[str, IssuerSettings] = {}
        self._keys: dict[str, IssuerKeys] = {}
        for issuer in issuers:
            self._by_issuer.setdefault(issuer.issuer, issuer)
            self._keys[issuer.name] = IssuerKeys(issuer, fetch)

    def keys_for(self, issuer_name: str) -> IssuerKeys:
        """The key cache (and discovery document) of the issuer named ``issuer_name``."""
        try:
            return self._keys[issuer_name]
        except KeyError:
            raise KeyError(f"no issuer named {issuer_name!r} is configured") from None

    def validate(self, token: str) -> Validated:
        """Check ``token`` completely; raise TokenError (or ProviderError) if it does not pass."""
        if len(token) > MAX_TOKEN:
            raise TokenError(
                f"token rejected: it is {len(token)} characters long, more than the {MAX_TOKEN} "
                "a token may have"
            )
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise TokenError(
                f"token rejected: it is not a well-formed JWT ({shown(str(exc), str, 200)})"
            ) from exc
        iss = unverified.get("iss")
        settings = self._by_issuer.get(iss) if isinstance(iss, str) else None
        if settings is None:
            if iss is None:
                raise TokenError("token rejected: it has no 'iss' claim")
            raise TokenError(f"token rejected: issuer {shown(iss)} is not configured")

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in settings.algorithms:
            raise TokenError(
                f"token rejected: algorithm {shown(alg)} is not allowed "
                f"(allowed: {', '.join(settings.algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("token rejected: its key id ('kid') is not a string")
        key = self._keys[settings.name].key(kid)
        kty, crv = KEY_TYPES[alg]
        if key.kty != kty or (crv is not None and key.crv != crv):
            kind = " ".join(part for part in (key.kty, key.crv) if part)
            raise TokenError(
                f"token rejected: algorithm {alg} does not fit the issuer's key {shown(key.kid)} "
                f"(a {kind} key)"
            )
        if key.alg not in (None, alg):
            raise TokenError(
                f"token rejected: key {shown(key.kid)} is for {shown(key.alg)}, not {alg}"
            )

        subject_claim = settings.subject_claim
        try:
            claims = _decode(
                token,
                key=key.public,
                algorithms=[alg],
                audience=list(settings.audience),
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={
                    "require": ["exp", "iat", "iss", "aud", subject_claim],
                    # Checked below against self._clock, with messages that say which time.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenError("token rejected: signature does not verify") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError(
                f"token rejected: audience {shown(unverified.get('aud'), json.dumps)} is not one "
                f"of {json.dumps(list(settings.audience))}"
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token rejected: the {exc.claim!r} claim is missing") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError(f"token rejected: issuer {shown(iss)} is not configured") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"token rejected: {shown(str(exc), str, 200)}") from exc

        now = self._clock()
        leeway = settings.leeway
        expires = _number(claims, "exp")
        issued_at = _number(claims, "iat")
        not_before = _number(claims, "nbf")
        assert expires is not None and issued_at is not None  # required above
        # RFC 7519: the token is good only while the time is before exp; nbf and iat may
        # equal the time.
        if now >= expires + leeway:
            raise TokenError(f"token rejected: expired at {_iso(expires)}")
        if not_before is not None and now + leeway < not_before:
            raise TokenError(f"token rejected: not valid before {_iso(not_before)}")
        if now + leeway < issued_at:
            raise TokenError(f"token rejected: issued in the future, at {_iso(issued_at)}")
        if settings.allow_clients:
            client = _client(claims)
            if client not in settings.allow_clients:
                said = (
                    f"was issued to client {shown(client)}"
                    if client
                    else "names no client (no 'azp' or 'client_id' claim)"
                )
                raise TokenError(
                    f"token rejected: it {said}, and issuer {settings.name} accepts tokens only "
                    "from the clients in its allow_clients"
                )

        subject = _text(claims, subject_claim)
        if not subject:
            raise TokenError(f"token rejected: the {subject_claim!r} claim is empty")
        identity = Identity(
            issuer=settings.issuer,
            subject=subject,
            email=_text(claims, settings.email_claim),
            name=_text(claims, settings.name_claim),
            groups=_groups(claims, settings.groups_claim),
        )
        jti = claims.get("jti")
        return Validated(
            identity=identity,
            expires=expires,
            issued_at=issued_at,
            not_before=not_before,
            token_id=jti if isinstance(jti, str) else None,
            key_id=key.kid,
            algorithm=alg,
            issuer_name=settings.name,
        )
