import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _rewrite_cache(tmp_path_factory):
    """Every tc-rewrite the tests start shares one rewrite cache of this session, never the user's own."""
    os.environ["TC_REWRITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("rewrite-cache"))
