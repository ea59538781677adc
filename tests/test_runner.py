"""The run folder and the launch: shscript word replacement, copy_all_files rules, environment, nesting."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, api_records, run_plain, run_tc
from traincheck_rewrite.shscript import replace_script_words


@pytest.mark.parametrize(
    "text,expected,count",
    [
        ("python train.py --epochs 3\n", "python /RUN/train.py --epochs 3\n", 1),
        ("torchrun --nproc_per_node 2 ./train.py\n", "torchrun --nproc_per_node 2 /RUN/train.py\n", 1),
        ("python 'train.py' && echo train.py.bak old_train.py\n", "python /RUN/train.py && echo train.py.bak old_train.py\n", 1),
        ("# python train.py\npython \\\n  train.py\n", "# python train.py\npython \\\n  /RUN/train.py\n", 1),
        ('python "$DIR/train.py"\n', 'python "$DIR/train.py"\n', 0),  # shell variables are left to the shell
        ("python other.py; cat train.py|wc\n", "python other.py; cat /RUN/train.py|wc\n", 1),
    ],
)
def test_shscript_words_are_replaced_only_whole(tmp_path: Path, text: str, expected: str, count: int):
    script = tmp_path / "train.py"
    script.write_text("")
    out, n = replace_script_words(text, script, Path("/RUN/train.py"), (tmp_path,))
    assert (out, n) == (expected, count)


def test_shscript_launches_the_instrumented_script_with_its_arguments(tmp_path: Path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("import sys, torch\nprint(sys.argv[1:], torch.ones(1).item())\n")
    (project / "run.sh").write_text('#!/bin/bash\nset -e\necho "launching"\n"$PYTHON" train.py --from-sh "$@"\n')
    (project / "cfg.yaml").write_text("pyscript: train.py\nshscript: run.sh\nargs: [--x]\n")
    os.environ["PYTHON"] = sys.executable
    try:
        traced = run_tc([str(project / "cfg.yaml")], tmp_path / "out", cwd=project)
    finally:
        del os.environ["PYTHON"]
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == "launching\n['--from-sh', '--x'] 1.0\n"
    assert any(r["function"] == "torch.ones" for r in api_records(traced.run_dir))


def test_copy_all_files_skips_vcs_venvs_caches_run_folders_and_outside_links(tmp_path: Path):
    project = tmp_path / "proj"
    for d in (".git", "venv_x", "__pycache__", "traincheck_run_old", "pkg", "data"):
        (project / d).mkdir(parents=True)
    (project / "venv_x" / "pyvenv.cfg").write_text("home = /usr\n")
    (project / ".git" / "config").write_text("")
    (project / "__pycache__" / "x.pyc").write_bytes(b"")
    (project / "traincheck_run_old" / "run.json").write_text("{}")
    (project / "pkg" / "__init__.py").write_text("import torch\nVALUE = torch.ones(1).item()\n")
    (project / "data" / "blob.bin").write_bytes(b"\x00\x01")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the tree")
    (project / "leak.txt").symlink_to(outside)
    (project / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    (project / "train.py").write_text("from pkg import VALUE\nprint(VALUE)\n")
    traced = run_tc(["--pyscript", str(project / "train.py"), "--copy-all-files"], project, cwd=project)
    assert traced.returncode == 0 and traced.stdout == "1.0\n", traced.stderr
    copied = {p.relative_to(traced.run_dir).as_posix() for p in traced.run_dir.rglob("*") if p.is_file()}
    assert {"train.py", "pkg/__init__.py", "data/blob.bin"} <= copied
    assert not any(c.startswith((".git", "venv_x", "__pycache__", "traincheck_run_", "linked_dir")) for c in copied)
    assert "leak.txt" not in copied
    assert any(r["function"] == "torch.ones" for r in api_records(traced.run_dir))  # pkg ran instrumented


def test_pythonpath_is_extended_and_sibling_modules_import_without_copy(tmp_path: Path):
    project = tmp_path / "proj"
    lib = tmp_path / "lib"
    project.mkdir()
    lib.mkdir()
    (lib / "extra.py").write_text("X = 'from PYTHONPATH'\n")
    (project / "sibling.py").write_text("Y = 'from the script folder'\n")
    (project / "train.py").write_text("import extra, sibling\nprint(extra.X, '|', sibling.Y)\n")
    os.environ["PYTHONPATH"] = str(lib)
    try:
        traced = run_tc(["--pyscript", str(project / "train.py")], tmp_path / "out", cwd=tmp_path)
    finally:
        del os.environ["PYTHONPATH"]
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == "from PYTHONPATH | from the script folder\n"


def test_calls_inside_the_users_forward_nest_under_the_model_call(tmp_path: Path):
    traced = run_tc([str(FIXTURES / "cnn" / "config.yaml")], tmp_path, cwd=FIXTURES / "cnn")
    records = api_records(traced.run_dir)
    by_id = {r["func_call_id"]: r for r in records if r["type"] == "function_call (pre)"}
    relu = next(r for r in by_id.values() if r["function"] == "torch.nn.functional.relu")
    parent = by_id[relu["parent_id"]]
    assert parent["function"] == "__main__.Net.forward"  # the user's model class: the forward it runs
    assert parent["time"] < relu["time"]
    post = {r["func_call_id"]: r["time"] for r in records if r["type"] != "function_call (pre)"}
    assert post[relu["func_call_id"]] < post[parent["func_call_id"]]


def test_without_output_dir_each_run_gets_a_new_folder_named_like_traincheck(tmp_path: Path):
    cmd = [sys.executable, "-m", "traincheck_rewrite", "--pyscript", str(FIXTURES / "mlp" / "train.py"), "--only-instr"]
    for _ in range(2):
        assert run_plain(cmd, cwd=tmp_path).returncode == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert len(made) == 2 and all(name.startswith("traincheck_run_train_torch_") for name in made), made
