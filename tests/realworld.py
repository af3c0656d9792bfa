"""Where the real third-party models and images live (``../shared/realworld``, see its README),
and a skip for tests that need them: the folder is beside the repository in CI and for every
developer, absent in a user's clone. ``VAEPROBE_REALWORLD`` overrides the location."""

import os
from pathlib import Path

import pytest

REALWORLD = Path(os.environ.get("VAEPROBE_REALWORLD")
                 or Path(__file__).resolve().parents[1] / ".." / "shared" / "realworld")


def path(*parts: str) -> Path:
    """A path under the real-world folder; the calling test is skipped, saying why, when it is
    absent."""
    found = REALWORLD.joinpath(*parts)
    if not found.exists():
        pytest.skip(f"real-world material {found} is absent (../shared/realworld beside the "
                    f"repository, or set VAEPROBE_REALWORLD)")
    return found
