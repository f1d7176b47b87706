"""``witness login``: the OAuth 2.0 device authorization grant (RFC 8628).

The person runs ``witness login`` on the bastion, where there is no browser. The issuer hands
out a short user code and a verification page; the person opens the page on any device, signs
in and approves; meanwhile Witness polls the token endpoint until the token is issued, the
person denies, or the code expires. The token is then validated like any other (``oidc.py``)
before it is bound to anyone.

Everything here is synchronous and each HTTP call is bounded by the issuer's ``timeout``: the
daemon runs it in worker threads, and an issuer that hangs must not hold one forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.config import IssuerSettings
from appliance.identity.limits import shown
from appliance.identity.oidc import IssuerKeys, ProviderError, http_json

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5
"""Seconds added to the polling interval on ``slow_down`` (RFC 8628, section 3.5)."""

Post = Callable[[str, Mapping[str, str], float], tuple[int, dict[str, Any]]]
"""POST a form to a URL within a timeout; return the HTTP status and the JSON object answered.

Raises ProviderError if the issuer cannot be reached or does not answer JSON.
"""


def post_form(url: str, form: Mapping[str, str], timeout: float) -> tuple[int, dict[str, Any]]:
    """The default ``Post``, with urllib."""
    return http_json(url, timeout, form)


class LoginError(Exception):
    """The sign-in cannot complete. The message says why, for the person signing in."""


@dataclass
class DeviceGrant:
    """A device authorization in progress: what the person is shown, and what Witness polls.

    Not frozen for one reason: ``interval`` grows when the issuer asks Witness to slow down,
    and must stay grown for every later poll of the same grant (RFC 8628, section 3.5).
    ``poll`` changes it; nothing else does.
    """

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float
    interval: int


def _endpoint(keys: IssuerKeys, name: str) -> str:
    try:
        url = keys.endpoint(name)
    except ProviderError as exc:
        raise LoginError(str(exc)) from exc
    if url is None:
        raise LoginError(f"the issuer has no {name}")
    return url


def _post(
    post: Post, url: str, form: Mapping[str, str], timeout: float
) -> tuple[int, dict[str, Any]]:
    try:
        return post(url, form, timeout)
    except ProviderError as exc:
        raise LoginError(str(exc)) from exc


def _oauth_error(body: Mapping[str, Any]) -> tuple[str, str]:
    error = body.get("error")
    description = body.get("error_description")
    return (
        error if isinstance(error, str) else "unknown_error",
        description if isinstance(description, str) else "",
    )


def _described(error: str, description: str) -> str:
    error = shown(error, str)
    return f"{error} ({shown(description, str, 200)})" if description else error


def start(
    keys: IssuerKeys,
    settings: IssuerSettings,
    post: Post = post_form,
    clock: Callable[[], float] = time.time,
) -> DeviceGrant:
    """Ask the issuer for a device code and a user code for ``settings.client_id``."""
    if not settings.client_id:
        raise LoginError(f"issuer {settings.name!r} has no client_id to sign in with")
    url = _endpoint(keys, "device_authorization_endpoint")
    form = {
        "client_id": settings.client_id,
        "scope": " ".join(settings.login_scopes),
        **dict(settings.login_params),
    }
    status, body = _post(post, url, form, settings.timeout)
    if status != 200:
        error, description = _oauth_error(body)
        raise LoginError(
            f"the issuer refused to start the sign-in: {_described(error, description)}"
        )
    device_code = body.get("device_code")
    user_code = body.get("user_code")
    uri = body.get("verification_uri")
    if not all(isinstance(value, str) and value for value in (device_code, user_code, uri)):
        raise LoginError(
            f"the issuer's answer from {url} lacks a device_code, user_code or verification_uri"
        )
    complete = body.get("verification_uri_complete")
    expires_in = body.get("expires_in")
    interval = body.get("interval", 5)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise LoginError(f"the issuer's answer from {url} has no valid expires_in")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        interval = 5
    return DeviceGrant(
        device_code=str(device_code),
        user_code=str(user_code),
        verification_uri=str(uri),
        verification_uri_complete=complete if isinstance(complete, str) and complete else None,
        expires_at=clock() + float(expires_in),
        interval=interval,
    )


def poll(
    keys: IssuerKeys,
    settings: IssuerSettings,
    grant: DeviceGrant,
    post: Post = post_form,
) -> str | None:
    """Ask the token endpoint once whether the grant was approved.

    Returns the token named by ``settings.login_token`` once issued, or None while the person
    has not decided yet (``authorization_pending``) and after ``slow_down``, which also adds
    ``SLOW_DOWN_STEP`` seconds to ``grant.interval``. Raises LoginError when the person
    denied, the code expired, or the issuer answers anything else.
    """
    url = _endpoint(keys, "token_endpoint")
    form = {
        "grant_type": DEVICE_CODE_GRANT,
        "device_code": grant.device_code,
        "client_id": settings.client_id or "",
    }
    status, body = _post(post, url, form, settings.timeout)
    if status == 200:
        token = body.get(settings.login_token)
        if not isinstance(token, str) or not token:
            raise LoginError(f"the issuer approved the sign-in but sent no {settings.login_token}")
        return token
    error, description = _oauth_error(body)
    if error == "authorization_pending":
        return None
    if error == "slow_down":
        grant.interval += SLOW_DOWN_STEP
        return None
    if error == "access_denied":
        raise LoginError("the sign-in was denied")
    if error == "expired_token":
        raise LoginError("the code expired before it was approved")
    raise LoginError(f"the issuer refused the sign-in: {_described(error, description)}")


def wait(
    keys: IssuerKeys,
    settings: IssuerSettings,
    grant: DeviceGrant,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    post: Post = post_form,
) -> str:
    """Poll every ``grant.interval`` seconds until the token is issued; LoginError otherwise.

    The first poll comes one interval after the start, as RFC 8628 asks. A poll is never
    made after the code has expired: the person is told so instead.
    """
    while True:
        remaining = grant.expires_at - clock()
        if remaining <= 0:
            raise LoginError("the code expired before it was approved")
        sleep(min(float(grant.interval), remaining))
        if clock() >= grant.expires_at:
            raise LoginError("the code expired before it was approved")
        token = poll(keys, settings, grant, post)
        if token is not None:
            return token
