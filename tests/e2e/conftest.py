import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import running_copies


@pytest.fixture
async def copies():
    """Three loopback copies, c0 to c2."""
    async with running_copies(3) as started:
        yield started
