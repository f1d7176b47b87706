"""The marks every root lab module starts with: root, the tools it runs, a time limit."""

from __future__ import annotations

import os
import shutil

import pytest

# The Debian package each tool comes from, for the skip reason.
PACKAGES = {
    "nft": "nftables",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "useradd": "passwd",
}


def lab_marks(needs: str, *tools: str, timeout: int | None = None) -> list[pytest.MarkDecorator]:
    """``root``, a skip unless root (saying what for: ``needs``), a skip for each missing
    tool, naming its package, and the module's timeout."""
    marks = [
        pytest.mark.root,
        pytest.mark.skipif(os.geteuid() != 0, reason=f"needs root ({needs})"),
        *(
            pytest.mark.skipif(
                shutil.which(tool) is None, reason=f"{tool} is not installed ({PACKAGES[tool]})"
            )
            for tool in tools
        ),
    ]
    if timeout is not None:
        marks.append(pytest.mark.timeout(timeout))
    return marks
