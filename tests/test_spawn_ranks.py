"""`process_id` in the export is the rank in an `mp.spawn` job as in a torchrun one: each rank makes calls before
`init_process_group` tells it its rank, and the parent that only spawns comes after the ranks."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import FIXTURES, run_tc


def test_spawned_ranks_are_their_process_ids_and_the_spawning_parent_comes_after(tmp_path: Path):
    traced = run_tc(["--pyscript", str(FIXTURES / "spawn" / "train.py")], tmp_path, timeout=600)
    assert traced.returncode == 0, traced.stderr[-3000:]
    assert traced.stdout.splitlines()[-1] == "done"
    ranks: dict[int, set] = {}
    functions: dict[int, set] = {}
    for path in traced.run_dir.glob("trace_API_*.log"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            ranks.setdefault(record["process_id"], set()).add(record["meta_vars"].get("rank"))
            functions.setdefault(record["process_id"], set()).add(record["function"])
    assert sorted(ranks) == [0, 1, 2]
    assert ranks[0] == {None, 0} and ranks[1] == {None, 1}  # calls before init_process_group have no rank yet
    assert ranks[2] == {None} and "torch.multiprocessing.spawn.spawn" in functions[2]
