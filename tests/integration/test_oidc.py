"""Token validation and the device flow against a real OpenID Provider (oidc-provider).

One provider runs for the module. Tests that stop or rotate it bring it back before they end,
so the others find it as they expect: up, on the same port, its current keys in ``idp.keys``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.identity import login
from appliance.identity.oidc import REFRESH_INTERVAL, ProviderError, TokenError, Validator
from appliance.lab import idp as idp_support
from appliance.lab.idp import IdP

pytestmark = pytest.mark.skipif(
    idp_support.missing() is not None, reason=str(idp_support.missing())
)


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with idp_support.running_idp() as provider:
        yield provider


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def validator(idp: IdP, **overrides: Any) -> Validator:
    return Validator([idp.settings(**overrides)])


# --- what works ------------------------------------------------------------------------------


def test_device_flow_end_to_end(idp: IdP) -> None:
    settings = idp.settings()
    check = Validator([settings])
    keys = check.keys_for(settings.name)

    grant = login.start(keys, settings)
    assert grant.verification_uri == idp.issuer + "/device"
    assert grant.verification_uri_complete is not None
    assert grant.user_code in grant.verification_uri_complete
    assert grant.expires_at > time.time() + 60
    assert login.poll(keys, settings, grant) is None  # nobody has approved yet

    idp.approve(grant, account="alice")
    slept: list[float] = []
    token = login.wait(keys, settings, grant, sleep=slept.append)
    assert slept == [float(grant.interval)]

    validated = check.validate(token)
    assert validated.identity.issuer == idp.issuer
    assert validated.identity.subject == "alice"
    assert validated.identity.email == "alice@example.test"
    assert validated.identity.name == "Alice Example"
    assert validated.identity.groups == ("dba", "agents")
    assert validated.issuer_name == "test-idp"
    assert validated.algorithm == "RS256"
    assert validated.key_id == idp.kid("RS256")
    assert validated.expires > time.time()

    # The device code is spent: polling it again is an error, not a second token.
    with pytest.raises(login.LoginError, match="invalid_grant"):
        login.poll(keys, settings, grant)


def test_device_flow_can_return_the_id_token(idp: IdP) -> None:
    settings = idp.settings(login_token="id_token", audience=("witness-cli",))
    check = Validator([settings])
    keys = check.keys_for(settings.name)
    grant = login.start(keys, settings)
    idp.approve(grant.user_code, account="bob")
    token = login.poll(keys, settings, grant)
    assert token is not None
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "witness-cli"
    identity = check.validate(token).identity
    assert (identity.subject, identity.email, identity.groups) == (
        "bob",
        "bob@example.test",
        ("agents",),
    )


def test_denied_sign_in(idp: IdP) -> None:
    settings = idp.settings()
    keys = validator(idp).keys_for(settings.name)
    grant = login.start(keys, settings)
    idp.deny(grant)
    with pytest.raises(login.LoginError, match=r"^the sign-in was denied$"):
        login.wait(keys, settings, grant, sleep=lambda _s: None)


@pytest.mark.parametrize(
    ("resource", "alg"), [("urn:witness", "RS256"), ("urn:witness:es", "ES256")]
)
def test_client_credentials(idp: IdP, resource: str, alg: str) -> None:
    token = idp.client_credentials("agent-ci", resource=resource)
    assert jwt.get_unverified_header(token)["alg"] == alg

    validated = validator(idp).validate(token)
    assert validated.algorithm == alg
    assert validated.key_id == idp.kid(alg)
    assert validated.identity.subject == "agent-ci"
    assert validated.identity.email == "agent-ci@example.test"
    assert validated.identity.name == "CI agent"
    assert validated.identity.groups == ("agents", "ci")
    assert validated.token_id


def test_each_client_is_its_own_identity(idp: IdP) -> None:
    identity = validator(idp).validate(idp.client_credentials("agent-two")).identity
    assert (identity.subject, identity.email, identity.groups) == (
        "agent-two",
        "agent-two@example.test",
        ("agents",),
    )


def test_allow_clients_admits_only_the_clients_it_lists(idp: IdP) -> None:
    # agent-ci and agent-two both get tokens for urn:witness: the audience cannot tell them
    # apart, the client claim can.
    check = validator(idp, allow_clients=("witness-cli", "agent-ci"))
    for resource in ("urn:witness", "urn:witness:es"):
        token = idp.client_credentials("agent-ci", resource=resource)
        assert check.validate(token).identity.subject == "agent-ci"
    other = idp.client_credentials("agent-two")
    assert validator(idp).validate(other).identity.subject == "agent-two"  # with no list
    with pytest.raises(TokenError) as caught:
        check.validate(other)
    assert str(caught.value) == (
        "token rejected: it was issued to client 'agent-two', and issuer test-idp accepts "
        "tokens only from the clients in its allow_clients"
    )


def test_allow_clients_and_the_device_flow(idp: IdP) -> None:
    # The provider's access tokens name their client in client_id: a person's login passes.
    settings = idp.settings(allow_clients=("witness-cli",))
    check = Validator([settings])
    keys = check.keys_for(settings.name)
    grant = login.start(keys, settings)
    idp.approve(grant, account="bob")
    token = login.wait(keys, settings, grant, sleep=lambda _s: None)
    assert check.validate(token).identity.subject == "bob"

    # Its ID tokens carry neither azp nor client_id (the audience is the client): with a
    # client list, such a token is refused, saying so.
    settings = idp.settings(
        login_token="id_token", audience=("witness-cli",), allow_clients=("witness-cli",)
    )
    check = Validator([settings])
    keys = check.keys_for(settings.name)
    grant = login.start(keys, settings)
    idp.approve(grant, account="bob")
    token = login.wait(keys, settings, grant, sleep=lambda _s: None)
    with pytest.raises(TokenError, match=r"it names no client \(no 'azp' or 'client_id' claim\)"):
        check.validate(token)


def test_a_token_naming_two_clients_is_refused(idp: IdP) -> None:
    claims = idp.claims(azp="agent-two", client_id="agent-ci")
    assert validator(idp).validate(idp.sign(claims)).identity.subject  # with no list
    with pytest.raises(TokenError, match="names two clients, 'agent-two' \\(azp\\)"):
        validator(idp, allow_clients=("agent-ci",)).validate(idp.sign(claims))


def test_a_token_signed_with_the_current_key_validates(idp: IdP) -> None:
    # The positive control for the forged tokens below: the same claims, well signed, pass.
    for alg in ("RS256", "ES256"):
        validated = validator(idp).validate(idp.sign(idp.claims(sub="forged-ok"), alg))
        assert validated.identity.subject == "forged-ok"
        assert validated.algorithm == alg


# --- what is refused -------------------------------------------------------------------------


def test_expired_token(idp: IdP) -> None:
    token = idp.client_credentials("agent-short")
    check = validator(idp)
    expires = check.validate(token).expires
    assert expires - time.time() <= idp_support.SHORT_TTL + 1
    time.sleep(max(0.0, expires - time.time()) + 1.1)
    with pytest.raises(TokenError, match=f"^token rejected: expired at {_iso(expires)}$"):
        check.validate(token)


def test_a_token_is_refused_from_the_second_it_expires(idp: IdP) -> None:
    token = idp.client_credentials("agent-ci")
    expires = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    settings = idp.settings()
    assert Validator([settings], clock=lambda: expires - 1).validate(token).expires == expires
    with pytest.raises(TokenError, match=f"^token rejected: expired at {_iso(expires)}$"):
        Validator([settings], clock=lambda: expires).validate(token)


def test_leeway_covers_a_just_expired_token(idp: IdP) -> None:
    claims = idp.claims(exp=int(time.time()) - 5)
    with pytest.raises(TokenError, match="expired at"):
        validator(idp).validate(idp.sign(claims))
    assert validator(idp, leeway=30.0).validate(idp.sign(claims)).identity.subject


def test_other_audience(idp: IdP) -> None:
    token = idp.client_credentials("agent-ci", resource="urn:other")
    with pytest.raises(TokenError) as caught:
        validator(idp).validate(token)
    assert str(caught.value) == (
        'token rejected: audience "urn:other" is not one of ["urn:witness"]'
    )


def test_payload_changed_after_signing(idp: IdP) -> None:
    token = idp.client_credentials("agent-ci")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(TokenError, match=r"^token rejected: signature does not verify$"):
        validator(idp).validate(forged)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_signed_by_another_key_with_the_same_kid(idp: IdP, alg: str) -> None:
    impostor = idp_support.SigningKey(alg)
    impostor.kid = idp.kid(alg)
    with pytest.raises(TokenError, match=r"^token rejected: signature does not verify$"):
        validator(idp).validate(idp.sign(idp.claims(), key=impostor))


def test_alg_none(idp: IdP) -> None:
    token = _unsigned({"alg": "none", "kid": idp.kid()}, idp.claims()) + "."
    with pytest.raises(TokenError) as caught:
        validator(idp).validate(token)
    assert str(caught.value) == (
        "token rejected: algorithm 'none' is not allowed (allowed: RS256, ES256)"
    )


def test_hs256_with_the_issuers_public_key_as_secret(idp: IdP) -> None:
    public = idp.private_key("RS256").public_key()
    secret = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": idp.kid()}, idp.claims())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(TokenError, match="algorithm 'HS256' is not allowed"):
        validator(idp).validate(f"{signing_input}.{_b64(mac)}")
    # Nor can an issuer be configured to accept it.
    with pytest.raises(ValueError, match="HS256"):
        validator(idp, algorithms=("RS256", "HS256"))


def test_algorithm_not_on_this_issuers_allowlist(idp: IdP) -> None:
    with pytest.raises(TokenError, match=r"algorithm 'ES256' is not allowed \(allowed: RS256\)"):
        validator(idp, algorithms=("RS256",)).validate(idp.sign(idp.claims(), "ES256"))


def test_unknown_issuer(idp: IdP) -> None:
    token = idp.sign(idp.claims(iss="https://evil.example"))
    with pytest.raises(TokenError) as caught:
        validator(idp).validate(token)
    assert str(caught.value) == "token rejected: issuer 'https://evil.example' is not configured"


def test_not_before_in_the_future(idp: IdP) -> None:
    nbf = int(time.time()) + 600
    with pytest.raises(TokenError, match=f"^token rejected: not valid before {_iso(nbf)}$"):
        validator(idp).validate(idp.sign(idp.claims(nbf=nbf)))


def test_issued_in_the_future(idp: IdP) -> None:
    iat = int(time.time()) + 600
    with pytest.raises(TokenError, match=f"issued in the future, at {_iso(iat)}$"):
        validator(idp).validate(idp.sign(idp.claims(iat=iat)))


def test_missing_subject(idp: IdP) -> None:
    with pytest.raises(TokenError, match="the 'sub' claim is missing"):
        validator(idp).validate(idp.sign(idp.claims(sub=None)))


# --- the identity provider goes away, or rotates its keys -------------------------------------


def test_idp_down_keeps_serving_cached_keys(idp: IdP) -> None:
    settings = idp.settings(timeout=1.0)
    check = Validator([settings])
    keys = check.keys_for(settings.name)
    assert check.validate(idp.client_credentials("agent-ci")).identity.subject == "agent-ci"
    minted = idp.client_credentials("agent-two")  # before the provider goes down
    fetches = keys.fetches

    idp.stop()
    try:
        started = time.monotonic()
        assert check.validate(minted).identity.subject == "agent-two"
        assert check.validate(idp.sign(idp.claims(), "ES256")).algorithm == "ES256"
        assert keys.fetches == fetches  # all from the cache
        assert time.monotonic() - started < 0.5

        # A key the cache does not have cannot be checked: the refresh fails, and says why.
        time.sleep(REFRESH_INTERVAL + 0.1)
        impostor = idp_support.SigningKey("RS256")
        started = time.monotonic()
        with pytest.raises(ProviderError, match="unreachable: connection refused"):
            check.validate(idp.sign(idp.claims(), key=impostor))
        assert time.monotonic() - started < settings.timeout

        started = time.monotonic()
        with pytest.raises(login.LoginError, match=r"^identity provider http\S+ unreachable: "):
            login.start(keys, settings)
        # A fresh validator has nothing cached, and says the issuer is unreachable.
        with pytest.raises(ProviderError, match="unreachable"):
            Validator([settings]).validate(minted)
        assert time.monotonic() - started < 2 * settings.timeout
    finally:
        idp.start()


def test_fetches_are_bounded_by_the_timeout(idp: IdP) -> None:
    # An issuer that accepts connections and never answers (the kernel completes the
    # handshakes of a listening socket nobody accepts on).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = idp.settings(issuer=issuer, timeout=0.5)
        check = Validator([settings])
        token = idp.sign(idp.claims(iss=issuer))
        for attempt in range(2):
            started = time.monotonic()
            with pytest.raises(ProviderError) as caught:
                check.validate(token)
            assert time.monotonic() - started < 1.5, attempt
            assert str(caught.value) == (
                f"identity provider {issuer}/.well-known/openid-configuration unreachable: "
                "timed out after 0.5 s"
            )
            time.sleep(1.0)  # past the refresh interval: the second attempt fetches again
    finally:
        silent.close()


def test_key_rotation(idp: IdP) -> None:
    check = validator(idp)
    keys = check.keys_for("test-idp")
    old = idp.keys["RS256"]
    assert check.validate(idp.client_credentials("agent-ci")).key_id == old.kid
    before_rotation = idp.client_credentials("agent-two")
    fetches = keys.fetches

    idp.rotate()
    new = idp.keys["RS256"]
    assert new.kid != old.kid
    # Keys are fetched at most once a second; the first fetch was just now.
    time.sleep(REFRESH_INTERVAL + 0.1)

    validated = check.validate(idp.client_credentials("agent-ci"))
    assert validated.key_id == new.kid
    assert keys.fetches == fetches + 1  # the unknown kid refreshed the keys, once
    assert old.kid not in keys.cached()

    for token in (before_rotation, idp.sign(idp.claims(), key=old)):
        with pytest.raises(TokenError) as caught:
            check.validate(token)
        assert str(caught.value) == (
            f"token rejected: unknown key id '{old.kid}' (not in the issuer's keys, even after "
            "refreshing them)"
        )


# --- the fixture in a network namespace ------------------------------------------------------


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip")
def test_idp_in_a_network_namespace() -> None:
    name = f"witness-idptest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with idp_support.running_idp(netns=name) as provider:
            # Not reachable from here: the provider listens in the namespace only.
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", provider.port), timeout=1).close()

            def fetch(url: str, timeout: float) -> dict[str, Any]:
                done = subprocess.run(
                    ["nsenter", f"--net=/run/netns/{name}", "curl", "-sf", "-m", str(timeout), url],
                    capture_output=True,
                    check=True,
                )
                return dict(json.loads(done.stdout))

            check = Validator([provider.settings()], fetch=fetch)
            token = provider.client_credentials("agent-ci", resource="urn:witness:es")
            assert check.validate(token).identity.subject == "agent-ci"

            def post(url: str, form: Any, timeout: float) -> tuple[int, dict[str, Any]]:
                args = [
                    arg
                    for key, value in form.items()
                    for arg in ("--data-urlencode", f"{key}={value}")
                ]
                done = subprocess.run(
                    [
                        "nsenter",
                        f"--net=/run/netns/{name}",
                        "curl",
                        "-s",
                        "-m",
                        str(timeout),
                        "-w",
                        "\n%{http_code}",
                        *args,
                        url,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                body, _, status = done.stdout.rpartition("\n")
                return int(status), dict(json.loads(body))

            settings = provider.settings()
            keys = check.keys_for(settings.name)
            grant = login.start(keys, settings, post=post)
            provider.approve(grant, "alice")  # in the namespace too
            approved = login.poll(keys, settings, grant, post=post)
            assert approved is not None
            assert check.validate(approved).identity.email == "alice@example.test"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    assert (
        name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )


def test_another_key_type_under_a_known_kid_is_refused(idp: IdP) -> None:
    # An ES256 token that names the issuer's RSA key: the key type must fit the algorithm.
    es = idp.keys["ES256"]
    rs_kid = idp.kid("RS256")
    token = jwt.encode(idp.claims(), es.key, algorithm="ES256", headers={"kid": rs_kid})
    with pytest.raises(
        TokenError, match=f"algorithm ES256 does not fit the issuer's key '{rs_kid}'"
    ):
        validator(idp).validate(token)


def test_rsa_key_of_another_issuer_is_not_trusted(idp: IdP) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(idp.claims(), other, algorithm="RS256", headers={"kid": "not-theirs"})
    with pytest.raises(TokenError, match="unknown key id 'not-theirs'"):
        validator(idp).validate(token)
