import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _rewrite_cache(tmp_path_factory):
    """Every tc-rewrite the tests start shares one rewrite cache of this session, never the user's own."""
    os.environ["TC_REWRITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("rewrite-cache"))


@pytest.fixture(scope="session")
def traced(tmp_path_factory):
    """traced(config, *script_args, env=None) -> the run folder of `tc-rewrite CONFIG -- ARGS`, run once per test
    worker and shared by the tests that read the same run (diff, chrome export, query)."""
    from helpers import run_tc

    made: dict = {}

    def run(config, *args: str, env: dict | None = None):
        key = (str(config), args, tuple(sorted((env or {}).items())))
        if key not in made:
            result = run_tc([str(config), "--", *args] if args else [str(config)], tmp_path_factory.mktemp("run"),
                            env_extra=env)
            assert result.returncode == 0 and result.run_dir is not None, result.stderr
            made[key] = result.run_dir
        return made[key]

    return run
