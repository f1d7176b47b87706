"""The approvals webhook: a JSON POST for each new hold, in the shape a Slack incoming webhook
takes (``text`` and ``blocks``), with Witness's own fields beside them under ``witness``.

Posted from a thread of its own (urllib blocks), retried with a growing pause, and never
awaited by the session: a hold waits for people, not for the webhook.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from appliance.policy.approvals import Hold, who

_FIRST_PAUSE = 0.5
_LONGEST_PAUSE = 30.0
_SHOWN = 500  # characters of the statement in the message


def message(hold: Hold) -> dict[str, Any]:
    """What the webhook gets for a new hold."""
    text = hold.text if len(hold.text) <= _SHOWN else hold.text[:_SHOWN] + "…"
    where = f"{hold.backend}" + (f"/{hold.database}" if hold.database else "")
    rule = f"rule {hold.rule!r}" if hold.rule else "the policy"
    summary = (
        f"Witness holds a statement from {who(hold.identity)} on {where} ({rule}), "
        f"approval id {hold.id}. Approve with `witness approvals approve {hold.id}`, "
        f"deny with `witness approvals deny {hold.id}`."
    )
    return {
        "text": summary,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{text}```"}},
        ],
        "witness": {
            "id": hold.id,
            "identity": hold.identity,
            "statement": hold.text,
            "rule": hold.rule,
            "reason": hold.reason,
            "session": hold.session,
            "backend": hold.backend,
            "database": hold.database,
            "deadline": hold.deadline,
        },
    }


class Webhook:
    """Posts to one URL, ``attempts`` times at most, each within ``timeout`` seconds."""

    def __init__(self, url: str, attempts: int, timeout: float) -> None:
        self.url = url
        self.attempts = attempts
        self.timeout = timeout
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="witness-webhook")

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310  (the URL is checked at load: http(s))
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
            answer.read()

    async def send(self, payload: dict[str, Any]) -> tuple[int, str | None]:
        """Post ``payload``: (attempts made, None) once it is taken, or the last error."""
        body = json.dumps(payload).encode()
        loop = asyncio.get_running_loop()
        pause = _FIRST_PAUSE
        error: str | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                await loop.run_in_executor(self.pool, self._post, body)
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code} {exc.reason}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                error = str(getattr(exc, "reason", None) or exc)
            else:
                return attempt, None
            if attempt < self.attempts:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
        return self.attempts, error

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
