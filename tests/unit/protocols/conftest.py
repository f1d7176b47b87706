"""The PostgreSQL parser tests share pgwire (encoders) and playbook (the runner) as siblings."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("playbook")
