"""Token validation, the key cache and the device flow, against a fake issuer (no network)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.config import IssuerSettings
from appliance.identity import login
from appliance.identity.limits import MAX_TOKEN
from appliance.identity.oidc import (
    REFRESH_INTERVAL,
    IssuerKeys,
    ProviderError,
    TokenError,
    Validator,
    fetch_json,
)

ISSUER = "https://idp.example.test"
DISCOVERY = ISSUER + "/.well-known/openid-configuration"
JWKS = ISSUER + "/jwks"


def _b64(number: int, size: int | None = None) -> str:
    raw = number.to_bytes(size or (number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(kid: str | None, key: Any) -> dict[str, Any]:
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _b64(numbers.n), "e": _b64(numbers.e)}
    else:
        point = key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": _b64(point.x, 32), "y": _b64(point.y, 32)}
    if kid is not None:
        jwk["kid"] = kid
    return jwk


class FakeIssuer:
    """A ``Fetch`` serving a discovery document and a JWKS, counting and able to fail."""

    def __init__(self) -> None:
        self.keys: dict[str | None, Any] = {"k1": rsa.generate_private_key(65537, 2048)}
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "jwks_uri": JWKS,
            "token_endpoint": ISSUER + "/token",
            "device_authorization_endpoint": ISSUER + "/device/auth",
        }
        self.calls: list[str] = []
        self.down = False
        self.delay = 0.0

    def __call__(self, url: str, timeout: float) -> dict[str, Any]:
        self.calls.append(url)
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise ProviderError(f"identity provider {url} unreachable: connection refused")
        if url == DISCOVERY:
            return dict(self.discovery)
        if url == JWKS:
            return {"keys": [public_jwk(kid, key) for kid, key in self.keys.items()]}
        raise ProviderError(f"identity provider {url} answered HTTP 404")

    def jwks_fetches(self) -> int:
        return self.calls.count(JWKS)

    def token(self, kid: str | None = "k1", alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": "urn:witness", "sub": "s1", "iat": now, "exp": now + 60}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(payload, self.keys[kid], algorithm=alg, headers=headers)


def settings(**overrides: Any) -> IssuerSettings:
    base: dict[str, Any] = {
        "name": "fake",
        "issuer": ISSUER,
        "audience": ("urn:witness",),
        "client_id": "witness-cli",
        "leeway": 0.0,
    }
    base.update(overrides)
    return IssuerSettings(**base)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the key cache ---------------------------------------------------------------------------


def test_unknown_kid_refreshes_at_most_once_a_second() -> None:
    issuer, clock = FakeIssuer(), Clock()
    keys = IssuerKeys(settings(), issuer, clock=clock)
    assert keys.key("k1").kid == "k1"
    assert issuer.jwks_fetches() == 1

    # Just fetched: an unknown kid within the second does not fetch again.
    with pytest.raises(TokenError, match="unknown key id 'k9'"):
        keys.key("k9")
    assert issuer.jwks_fetches() == 1

    clock.now += 1.0
    with pytest.raises(TokenError, match="unknown key id 'k9'"):
        keys.key("k9")
    with pytest.raises(TokenError, match="unknown key id 'k9'"):
        keys.key("k9")
    assert issuer.jwks_fetches() == 2

    # The issuer rotates: the new kid is found after the next allowed refresh.
    issuer.keys = {"k2": rsa.generate_private_key(65537, 2048)}
    clock.now += 1.5
    assert keys.key("k2").kid == "k2"
    assert issuer.jwks_fetches() == 3
    assert set(keys.cached()) == {"k2"}  # the old key is dropped
    assert issuer.calls.count(DISCOVERY) == 1  # discovery is fetched once


def test_concurrent_misses_coalesce_into_one_fetch() -> None:
    issuer = FakeIssuer()
    # No rate limit here: only the coalescing may keep the eight misses to one fetch.
    keys = IssuerKeys(settings(), issuer, refresh_interval=0.0)
    keys.key("k1")
    issuer.keys["k2"] = rsa.generate_private_key(65537, 2048)
    issuer.delay = 0.2

    barrier = threading.Barrier(8)
    found: list[str | None] = []

    def miss() -> None:
        barrier.wait()
        found.append(keys.key("k2").kid)

    threads = [threading.Thread(target=miss) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert found == ["k2"] * 8
    assert issuer.jwks_fetches() == 2  # the first fetch, and one refresh for all eight


def test_cached_keys_keep_serving_while_the_issuer_is_down() -> None:
    issuer = FakeIssuer()
    check = Validator([settings()], fetch=issuer)
    keys = check.keys_for("fake")
    check.validate(issuer.token())
    issuer.down = True
    time.sleep(REFRESH_INTERVAL)  # so that the unknown kid below does try a refresh
    assert check.validate(issuer.token()).identity.subject == "s1"
    # An unknown kid cannot be settled while the issuer is down: that is a provider error.
    issuer.keys["k3"] = rsa.generate_private_key(65537, 2048)
    with pytest.raises(ProviderError, match=r"could not be refreshed: .*connection refused"):
        check.validate(issuer.token("k3"))
    assert set(keys.cached()) == {"k1"}


def test_discovery_issuer_mismatch() -> None:
    issuer = FakeIssuer()
    issuer.discovery["issuer"] = "https://other.example.test"
    with pytest.raises(ProviderError) as caught:
        IssuerKeys(settings(), issuer).discovery()
    message = str(caught.value)
    assert DISCOVERY in message
    assert "'https://other.example.test'" in message
    assert f"{ISSUER!r}" in message
    # And so no token from it validates.
    with pytest.raises(ProviderError, match="says its issuer is"):
        Validator([settings()], fetch=issuer).validate(issuer.token())


def test_trailing_slash_is_a_different_issuer() -> None:
    issuer = FakeIssuer()
    issuer.discovery["issuer"] = ISSUER + "/"
    with pytest.raises(ProviderError, match="must be the same exactly"):
        IssuerKeys(settings(), issuer).discovery()


def test_token_without_kid() -> None:
    issuer = FakeIssuer()
    issuer.keys = {None: rsa.generate_private_key(65537, 2048)}
    assert Validator([settings()], fetch=issuer).validate(issuer.token(None)).key_id is None

    # With several keys, a token without a kid cannot say which one it was signed with.
    issuer.keys["k2"] = rsa.generate_private_key(65537, 2048)
    with pytest.raises(TokenError, match="no key id, and the issuer publishes 2 keys"):
        Validator([settings()], fetch=issuer).validate(issuer.token(None))


def test_symmetric_and_encryption_keys_in_the_jwks_are_ignored() -> None:
    issuer = FakeIssuer()
    real = issuer.__call__

    def fetch(url: str, timeout: float) -> dict[str, Any]:
        document = real(url, timeout)
        if url == JWKS:
            document["keys"] += [
                {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
                {**document["keys"][0], "kid": "enc", "use": "enc"},
            ]
        return document

    keys = IssuerKeys(settings(), fetch)
    keys.key("k1")
    assert set(keys.cached()) == {"k1"}


# --- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (["dba", "agents"], ("dba", "agents")),
        ([], ()),
        ("dba", ("dba",)),
        (None, ()),
    ],
)
def test_groups_claim_shapes(groups: Any, expected: tuple[str, ...]) -> None:
    issuer = FakeIssuer()
    token = issuer.token(groups=groups)
    assert Validator([settings()], fetch=issuer).validate(token).identity.groups == expected


@pytest.mark.parametrize("groups", [7, ["dba", 7], {"dba": True}, [["dba"]]])
def test_groups_claim_of_another_shape_is_refused(groups: Any) -> None:
    issuer = FakeIssuer()
    with pytest.raises(TokenError, match="the 'groups' claim must be a list of strings"):
        Validator([settings()], fetch=issuer).validate(issuer.token(groups=groups))


def test_configured_claim_names() -> None:
    issuer = FakeIssuer()
    token = issuer.token(oid="o-1", mail="m@example.test", display="M", roles=["r"])
    check = Validator(
        [
            settings(
                subject_claim="oid", email_claim="mail", name_claim="display", groups_claim="roles"
            )
        ],
        fetch=issuer,
    )
    identity = check.validate(token).identity
    assert (identity.subject, identity.email, identity.name, identity.groups) == (
        "o-1",
        "m@example.test",
        "M",
        ("r",),
    )


def test_missing_sub() -> None:
    issuer = FakeIssuer()
    with pytest.raises(TokenError, match=r"^token rejected: the 'sub' claim is missing$"):
        Validator([settings()], fetch=issuer).validate(issuer.token(sub=None))


def test_missing_configured_subject_claim() -> None:
    issuer = FakeIssuer()
    with pytest.raises(TokenError, match="the 'oid' claim is missing"):
        Validator([settings(subject_claim="oid")], fetch=issuer).validate(issuer.token())


@pytest.mark.parametrize("claim", ["exp", "iat", "aud", "iss"])
def test_required_claims(claim: str) -> None:
    issuer = FakeIssuer()
    with pytest.raises(TokenError, match=f"'{claim}'"):
        Validator([settings()], fetch=issuer).validate(issuer.token(**{claim: None}))


def test_non_string_subject_is_refused() -> None:
    issuer = FakeIssuer()
    with pytest.raises(TokenError, match="must be a string"):  # pyjwt 2.10+ checks it first
        Validator([settings()], fetch=issuer).validate(issuer.token(sub=42))


def test_times_use_the_validators_clock() -> None:
    issuer = FakeIssuer()
    token = issuer.token(iat=2000, exp=2060, nbf=2000)
    clock = Clock()
    check = Validator([settings()], fetch=issuer, clock=clock)
    clock.now = 2030
    assert check.validate(token).not_before == 2000
    clock.now = 1999
    with pytest.raises(TokenError, match="not valid before 1970-01-01T00:33:20Z"):
        check.validate(token)
    clock.now = 2061
    with pytest.raises(TokenError, match="expired at 1970-01-01T00:34:20Z"):
        check.validate(token)


def test_a_token_has_expired_from_the_moment_its_exp_names() -> None:
    # RFC 7519, 4.1.4: the current time must be before exp. At exp exactly, it is over.
    issuer = FakeIssuer()
    token = issuer.token(iat=2000, exp=2060, nbf=2010)
    clock = Clock()
    check = Validator([settings()], fetch=issuer, clock=clock)
    clock.now = 2059.999
    assert check.validate(token).expires == 2060
    clock.now = 2060
    with pytest.raises(TokenError, match="expired at 1970-01-01T00:34:20Z"):
        check.validate(token)
    # nbf is the other way round: at nbf exactly, the token is good.
    clock.now = 2010
    assert check.validate(token).not_before == 2010

    # Leeway moves the edge by exactly the leeway, and not a moment more.
    lenient = Validator([settings(leeway=30.0)], fetch=issuer, clock=clock)
    clock.now = 2089.999
    assert lenient.validate(token).expires == 2060
    clock.now = 2090
    with pytest.raises(TokenError, match="expired at"):
        lenient.validate(token)


@pytest.mark.parametrize(
    ("claims", "client"),
    [
        ({"azp": "agent-ci"}, "agent-ci"),
        ({"client_id": "agent-ci"}, "agent-ci"),
        ({"azp": "agent-ci", "client_id": "agent-ci"}, "agent-ci"),
    ],
)
def test_allow_clients_reads_azp_else_client_id(claims: dict[str, Any], client: str) -> None:
    issuer = FakeIssuer()
    check = Validator([settings(allow_clients=("agent-ci",))], fetch=issuer)
    assert check.validate(issuer.token(**claims)).identity.subject == "s1"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (
            {"azp": "agent-two"},
            "token rejected: it was issued to client 'agent-two', and issuer fake accepts "
            "tokens only from the clients in its allow_clients",
        ),
        (
            {"client_id": "agent-two"},
            "token rejected: it was issued to client 'agent-two', and issuer fake accepts "
            "tokens only from the clients in its allow_clients",
        ),
        (
            # azp wins over client_id, so a listed client_id cannot vouch for another azp.
            {"azp": "agent-two", "client_id": "agent-ci"},
            "token rejected: it names two clients, 'agent-two' (azp) and 'agent-ci' (client_id)",
        ),
        (
            {},
            "token rejected: it names no client (no 'azp' or 'client_id' claim), and issuer "
            "fake accepts tokens only from the clients in its allow_clients",
        ),
        ({"azp": ["agent-ci"]}, "token rejected: the 'azp' claim must be a string, not list"),
        ({"client_id": 7}, "token rejected: the 'client_id' claim must be a string, not int"),
        ({"azp": ""}, "token rejected: it names no client"),
        (
            {"azp": "agent-ci" + "x" * 10_000},
            "token rejected: it was issued to client 'agent-cixxxx",
        ),
    ],
)
def test_allow_clients_refuses_every_other_client(claims: dict[str, Any], message: str) -> None:
    issuer = FakeIssuer()
    check = Validator([settings(allow_clients=("agent-ci", "witness-cli"))], fetch=issuer)
    with pytest.raises(TokenError) as caught:
        check.validate(issuer.token(**claims))
    assert str(caught.value).startswith(message), str(caught.value)[:300]
    assert len(str(caught.value)) < 300


def test_key_type_must_fit_the_algorithm() -> None:
    issuer = FakeIssuer()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        {"iss": ISSUER, "aud": "urn:witness", "sub": "s", "iat": 1, "exp": 2**40},
        ec_key,
        algorithm="ES256",
        headers={"kid": "k1"},  # an RSA key
    )
    with pytest.raises(TokenError, match="algorithm ES256 does not fit the issuer's key 'k1'"):
        Validator([settings()], fetch=issuer).validate(token)


def _token_of_length(issuer: FakeIssuer, length: int) -> str:
    """A well-signed token exactly ``length`` characters long. Base64url never makes a segment
    of 4k+1 characters, so a filler claim and a filler header field share the padding."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "urn:witness", "sub": "s1", "iat": now, "exp": now + 60}
    estimate = (length - len(issuer.token())) * 3 // 4
    for pad in range(4):
        for size in range(max(0, estimate - 32), estimate + 32):
            token = jwt.encode(
                {**claims, "filler": "x" * size},
                issuer.keys["k1"],
                algorithm="RS256",
                headers={"kid": "k1", "pad": "p" * pad},
            )
            if len(token) == length:
                return token
    raise AssertionError(f"no token of {length} characters")


def test_a_token_of_the_largest_size_validates_and_one_more_is_refused() -> None:
    issuer = FakeIssuer()
    check = Validator([settings()], fetch=issuer)
    assert check.validate(_token_of_length(issuer, MAX_TOKEN)).identity.subject == "s1"
    with pytest.raises(TokenError) as caught:
        check.validate(_token_of_length(issuer, MAX_TOKEN + 1))
    assert str(caught.value) == (
        f"token rejected: it is {MAX_TOKEN + 1} characters long, more than the {MAX_TOKEN} "
        "a token may have"
    )


def test_a_huge_token_is_refused_before_anything_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = FakeIssuer()
    check = Validator([settings()], fetch=issuer)
    huge = issuer.token(filler="x" * 10_000_000)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the token was decoded")

    monkeypatch.setattr(jwt, "get_unverified_header", never)
    monkeypatch.setattr(jwt, "decode", never)
    tracemalloc.start()
    try:
        with pytest.raises(TokenError, match=r"more than the 16384 a token may have$"):
            check.validate(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # nothing the size of the token was made
    assert issuer.calls == []  # nor was the issuer asked for anything


LONG = "A" * 11_000
"""A value that fits in a token of the largest size, and has no place in a message."""


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token with any header at all, and a signature that signs nothing."""
    parts = [base64.urlsafe_b64encode(json.dumps(p).encode()).decode() for p in (header, claims)]
    return ".".join([*(part.rstrip("=") for part in parts), "c2ln"])


@pytest.mark.parametrize(
    ("forge", "expected"),
    [
        (
            lambda issuer: jwt.encode(
                {"iss": ISSUER}, issuer.keys["k1"], algorithm="RS256", headers={"kid": LONG}
            ),
            "token rejected: unknown key id 'AAAA",
        ),
        (lambda issuer: issuer.token(iss=LONG), "token rejected: issuer 'AAAA"),
        (
            lambda issuer: _unsigned({"alg": LONG}, {"iss": ISSUER}),
            "token rejected: algorithm 'AAAA",
        ),
        (lambda issuer: issuer.token(aud=[LONG, "urn:other"]), 'token rejected: audience ["AAAA'),
        (
            lambda issuer: issuer.token(groups=[LONG, 7]),
            "token rejected: the 'groups' claim must be a list",
        ),
    ],
    ids=["kid", "iss", "alg", "aud", "groups"],
)
def test_what_a_token_says_is_quoted_only_in_part(forge: Any, expected: str) -> None:
    issuer = FakeIssuer()
    check = Validator([settings()], fetch=issuer)
    token = forge(issuer)
    assert len(token) <= MAX_TOKEN
    with pytest.raises(TokenError) as caught:
        check.validate(token)
    message = str(caught.value)
    assert message.startswith(expected), message[:200]
    assert len(message) < 300, message[:200]
    assert "characters)" in message


def test_an_unknown_kid_is_quoted_only_in_part_while_the_issuer_is_down() -> None:
    issuer = FakeIssuer()
    keys = IssuerKeys(settings(), issuer, refresh_interval=0.0)
    keys.key("k1")
    issuer.down = True
    with pytest.raises(ProviderError) as caught:
        keys.key(LONG)
    message = str(caught.value)
    assert message.startswith("token key id 'AAAA") and f"({len(LONG)} characters)" in message
    assert len(message) < 300, message[:200]


def test_a_discovery_document_naming_a_huge_issuer_is_quoted_only_in_part() -> None:
    issuer = FakeIssuer()
    issuer.discovery["issuer"] = LONG
    with pytest.raises(ProviderError, match="says its issuer is 'AAAA") as caught:
        IssuerKeys(settings(), issuer).discovery()
    assert len(str(caught.value)) < 400


def test_not_a_jwt() -> None:
    with pytest.raises(TokenError, match="not a well-formed JWT"):
        Validator([settings()], fetch=FakeIssuer()).validate("hello")


# --- fetch_json, against a local HTTP server -------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        bodies = {"/big": b"[" + b"0," * 600_000 + b"0]", "/html": b"<html>", "/list": b"[1]"}
        body = bodies.get(self.path, b'{"ok": true}')
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_fetch_json(server: str) -> None:
    assert fetch_json(server + "/ok", 2) == {"ok": True}
    with pytest.raises(ProviderError, match="answered with more than 1048576 bytes"):
        fetch_json(server + "/big", 2)
    with pytest.raises(ProviderError, match="/html answered HTTP 200 with something that is not"):
        fetch_json(server + "/html", 2)
    with pytest.raises(ProviderError, match="JSON that is not an object"):
        fetch_json(server + "/list", 2)
    with pytest.raises(ProviderError, match="/missing answered HTTP 404"):
        fetch_json(server + "/missing", 2)
    with pytest.raises(ProviderError, match="not an http"):
        fetch_json("file:///etc/passwd", 2)


def test_fetch_json_unreachable(server: str) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks"
    with pytest.raises(ProviderError) as caught:
        fetch_json(url, 2)
    assert str(caught.value) == f"identity provider {url} unreachable: connection refused"


# --- the device flow, against a fake token endpoint ------------------------------------------


class FakeEndpoints:
    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, dict[str, str]]] = []

    def __call__(self, url: str, form: Any, timeout: float) -> tuple[int, dict[str, Any]]:
        self.requests.append((url, dict(form)))
        return self.answers.pop(0)


def _grant(**overrides: Any) -> login.DeviceGrant:
    base: dict[str, Any] = {
        "device_code": "dc",
        "user_code": "ABCD-EFGH",
        "verification_uri": ISSUER + "/device",
        "verification_uri_complete": None,
        "expires_at": 1600.0,
        "interval": 5,
    }
    base.update(overrides)
    return login.DeviceGrant(**base)


def test_start_posts_client_scopes_and_login_params() -> None:
    issuer = FakeIssuer()
    keys = IssuerKeys(settings(), issuer)
    post = FakeEndpoints(
        [
            (
                200,
                {
                    "device_code": "dc",
                    "user_code": "ABCD-EFGH",
                    "verification_uri": ISSUER + "/device",
                    "expires_in": 600,
                },
            )
        ]
    )
    grant = login.start(
        keys, settings(login_params=(("resource", "urn:witness"),)), post=post, clock=lambda: 100
    )
    assert grant == _grant(expires_at=700.0)
    assert post.requests == [
        (
            ISSUER + "/device/auth",
            {
                "client_id": "witness-cli",
                "scope": "openid email profile",
                "resource": "urn:witness",
            },
        )
    ]


def test_start_without_device_endpoint() -> None:
    issuer = FakeIssuer()
    del issuer.discovery["device_authorization_endpoint"]
    with pytest.raises(
        login.LoginError, match=r"^the issuer has no device_authorization_endpoint$"
    ):
        login.start(IssuerKeys(settings(), issuer), settings(), post=FakeEndpoints([]))


def test_poll_answers() -> None:
    keys = IssuerKeys(settings(), FakeIssuer())
    grant = _grant()
    post = FakeEndpoints(
        [
            (400, {"error": "authorization_pending"}),
            (400, {"error": "slow_down"}),
            (200, {"access_token": "AT", "id_token": "IT"}),
        ]
    )
    assert login.poll(keys, settings(), grant, post=post) is None
    assert grant.interval == 5
    assert login.poll(keys, settings(), grant, post=post) is None
    assert grant.interval == 10
    assert login.poll(keys, settings(), grant, post=post) == "AT"
    assert post.requests[0] == (
        ISSUER + "/token",
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": "dc",
            "client_id": "witness-cli",
        },
    )


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"error": "access_denied"}, "^the sign-in was denied$"),
        ({"error": "expired_token"}, "^the code expired before it was approved$"),
        ({"error": "invalid_client", "error_description": "no"}, r"invalid_client \(no\)"),
    ],
)
def test_poll_errors(answer: dict[str, Any], message: str) -> None:
    keys = IssuerKeys(settings(), FakeIssuer())
    with pytest.raises(login.LoginError, match=message):
        login.poll(keys, settings(), _grant(), post=FakeEndpoints([(400, answer)]))


def test_an_issuers_long_refusal_is_quoted_only_in_part() -> None:
    keys = IssuerKeys(settings(), FakeIssuer())
    answer = {"error": "E" * 100_000, "error_description": "D" * 100_000}
    for attempt in (
        lambda: login.poll(keys, settings(), _grant(), post=FakeEndpoints([(400, answer)])),
        lambda: login.start(keys, settings(), post=FakeEndpoints([(400, answer)])),
    ):
        with pytest.raises(login.LoginError) as caught:
            attempt()
        message = str(caught.value)
        assert "EEEE" in message and "DDDD" in message and "(100000 characters)" in message
        assert len(message) < 400, message[:200]


def test_poll_unreachable() -> None:
    keys = IssuerKeys(settings(), FakeIssuer())

    def down(url: str, form: Any, timeout: float) -> tuple[int, dict[str, Any]]:
        raise ProviderError(f"identity provider {url} unreachable: timed out after {timeout:g} s")

    with pytest.raises(login.LoginError, match="/token unreachable: timed out after 5 s"):
        login.poll(keys, settings(), _grant(), post=down)


def test_wait_until_expiry() -> None:
    keys = IssuerKeys(settings(), FakeIssuer())
    clock = Clock()
    post = FakeEndpoints([(400, {"error": "authorization_pending"})] * 100)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    grant = _grant(expires_at=clock.now + 12)
    with pytest.raises(login.LoginError, match=r"^the code expired before it was approved$"):
        login.wait(keys, settings(), grant, sleep=sleep, clock=clock, post=post)
    assert len(post.requests) == 2  # at +5 and +10; never after the expiry at +12


def test_wait_returns_the_token() -> None:
    keys = IssuerKeys(settings(), FakeIssuer())
    post = FakeEndpoints([(400, {"error": "authorization_pending"}), (200, {"access_token": "AT"})])
    slept: list[float] = []
    token = login.wait(
        keys, settings(), _grant(), sleep=slept.append, clock=lambda: 1000.0, post=post
    )
    assert token == "AT"
    assert slept == [5.0, 5.0]
