"""The PostgreSQL parser tests share playbook (the runner) as a sibling; pgwire (the encoders)
is in tests/support, for the integration tests too."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("playbook")
