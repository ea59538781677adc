"""Bad input through the real CLI: one line on stderr naming the file, key or line, exit code 2, nothing left
behind; and the forms of invocation TrainCheck users know."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, run_tc

TRAIN = "import torch\nprint(torch.ones(2).sum().item())\n"


def tc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "traincheck_rewrite", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    return tmp_path


BAD_CONFIGS = [
    ("pyscirpt: train.py\n", r"unknown key 'pyscirpt' \(did you mean 'pyscript'\?\)"),
    ("pyscript: train.py\nmodels_to_track: 3\n", r"models_to_track: expected a list of strings, got an integer 3"),
    ("pyscript: train.py\ncopy_all_files: 'yes'\n", r"copy_all_files: expected true or false, got a string 'yes'"),
    ("pyscript: train.py\nsampling_interval: 0\n", r"sampling_interval: must be at least 1, got 0"),
    ("pyscript: train.py\nwarm_up_steps: 1.5\n", r"warm_up_steps: expected an integer, got a number 1.5"),
    ("pyscript: train.py\nmodel_tracker_style: proxi\n", r"model_tracker_style: expected one of proxy, subclass, sampler, got 'proxi'"),
    ("pyscript: train.py\ntensor_dump_format: csv\n", r"tensor_dump_format: expected one of hash, stats, full"),
    ("pyscript: missing.py\n", r"pyscript: file not found: .*missing\.py"),
    ("pyscript: train.py\nshscript: run.sh\n", r"shscript: file not found: .*run\.sh"),
    ("shscript: train.py\n", r"pyscript: required with shscript"),
    ("models_to_track: [model]\n", r"pyscript: no script given"),
    ("pyscript: train.py\n  bad: indent\n", r"YAML error at line 2"),
    ("pyscript: [train.py\n", r"YAML error at line 2"),
    ("- pyscript\n", r"expected a mapping of keys"),
    ("", r"the config file is empty"),
    ("pyscript: train.py\nargs: --epochs 3\n", r"args: expected a list of arguments"),
    ("pyscript: train.py\nmeta_vars: {1bad: x}\n", r"meta_vars: '1bad' is not a valid name"),
    ("pyscript: train.py\nmeta_from: {epoch: 'not a name'}\n", r"meta_from: value of 'epoch' must name a variable"),
    ("pyscript: train.py\nmodules_to_instr: ['torch nn']\n", r"modules_to_instr: 'torch nn' is not a dotted Python name"),
    ("pyscript: train.py\ninvariants: [inv.json]\n", r"invariants: file not found: .*inv\.json"),
    ("pyscript: .\n", r"pyscript: not a file"),
    ("pyscript: train.py\nrewrite_libraries: [torch.optimz]\n", r"rewrite_libraries: no module named 'torch.optimz'"),
    ("pyscript: train.py\nrewrite_libraries: [torch.optim.sgd.nope]\n", r"no module named 'torch.optim.sgd.nope'"),
    ("pyscript: train.py\nrewrite_libraries: [json]\n", r"rewrite_libraries: 'json' is in the standard library"),
    ("pyscript: train.py\nrewrite_libraries: [torch._C]\n", r"rewrite_libraries: 'torch._C' is a compiled extension"),
    ("pyscript: train.py\nrewrite_libraries: [traincheck_rewrite]\n", r"rewrite_libraries: .* this tool's own package"),
    ("pyscript: train.py\nrewrite_libraries: [torch._dynamo.eval_frame]\n", r"'torch._dynamo.eval_frame' is never rewritten"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS, ids=[m[:30] for _, m in BAD_CONFIGS])
def test_bad_config_is_one_line_and_exit_2(project: Path, text: str, message: str):
    (project / "cfg.yaml").write_text(text)
    proc = tc(["cfg.yaml", "--output-dir", "out"], project)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tc-rewrite: error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (project / "out").exists() or not any((project / "out").iterdir())  # nothing was made


BAD_COMMAND_LINES = [
    (["missing.yaml"], r"missing\.yaml: config file not found"),
    (["--bogus"], r"No such option: --bogus|No such option '--bogus'"),
    ([], r"no config file and no --pyscript"),
    (["--use-config"], r"--use-config needs --config FILE"),
    (["--pyscript", "train.py", "--sampling-interval", "x"], r"'x' is not a valid integer"),
    (["--pyscript", "train.py", "--model-tracker-style", "box"], r"'box' is not one of"),
    (["--pyscript", "nope.py"], r"pyscript: file not found"),
    (["--pyscript", "train.py", "--meta-var", "novalue"], r"--meta-var 'novalue': expected KEY=VALUE"),
    (["trace", "summary", "no_such_run"], r"no_such_run: no such run folder"),
    (["--pyscript", "train.py", "--rewrite-libraries", "nosuchlib"], r"rewrite_libraries: no module named 'nosuchlib'"),
    (["cache", "purge"], r"No such command 'purge'"),
    (["--pyscript", "train.py", "--no-rewrite-libraries", "--rewrite-libraries", "torch.optim"],
     r"give either --rewrite-libraries or --no-rewrite-libraries, not both"),
]


@pytest.mark.parametrize("args,message", BAD_COMMAND_LINES, ids=[" ".join(a) or "(none)" for a, _ in BAD_COMMAND_LINES])
def test_bad_command_line_is_one_line_and_exit_2(project: Path, args: list[str], message: str):
    import re

    proc = tc(args, project)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr


def test_help_says_flags_override_the_config(project: Path):
    proc = tc(["--help"], project)
    assert proc.returncode == 0
    assert "override the config file" in " ".join(proc.stdout.split())
    for flag in ("--pyscript", "--shscript", "--modules-to-instr", "--models-to-track", "--model-tracker-style",
                 "--copy-all-files", "--output-dir", "--only-instr", "--invariants", "--sampling-interval",
                 "--warm-up-steps", "--tensor-dump-format", "--API-dump-stack-trace", "--use-full-instr",
                 "--debug-mode", "--use-config", "--config"):
        assert flag in proc.stdout, flag


def test_a_single_name_where_a_list_belongs_is_accepted_with_a_note(project: Path):
    (project / "cfg.yaml").write_text("pyscript: train.py\nmodels_to_track: model\n")
    proc = tc(["cfg.yaml", "--only-instr", "--output-dir", "out"], project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("note: ") == 1 and "using [model]" in proc.stderr
    run = project / "out"
    assert json.loads((run / "run.json").read_text())["config"]["models_to_track"] == ["model"]


def test_all_three_invocation_forms_and_override_order(project: Path, tmp_path: Path):
    (project / "other.py").write_text("import torch\nprint('other', torch.zeros(1).sum().item())\n")
    (project / "cfg.yaml").write_text("pyscript: train.py\nargs: [a]\n")
    positional = run_tc([str(project / "cfg.yaml"), "--", "b"], tmp_path / "1", cwd=project)
    assert positional.returncode == 0 and positional.stdout == "2.0\n", positional.stderr
    assert json.loads((positional.run_dir / "run.json").read_text())["config"]["args"] == ["a", "b"]
    traincheck_form = run_tc(["--use-config", "--config", "cfg.yaml", "--pyscript", "other.py"], tmp_path / "2", cwd=project)
    assert traincheck_form.stdout == "other 0.0\n", traincheck_form.stderr  # the flag overrides the config
    flags_only = run_tc(["-p", "train.py"], tmp_path / "3", cwd=project)
    assert flags_only.returncode == 0 and flags_only.stdout == "2.0\n"


@pytest.mark.parametrize(
    "config,flags,libraries",
    [
        ("pyscript: train.py\n", [], ["torch.nn.modules", "torch.nn.utils", "torch.nn.init"]),  # the default
        ("pyscript: train.py\nrewrite_libraries: []\n", [], []),
        ("pyscript: train.py\n", ["--no-rewrite-libraries"], []),
        ("pyscript: train.py\nrewrite_libraries: [torch.optim]\n", [], ["torch.optim"]),  # naming the key replaces it
        ("pyscript: train.py\nrewrite_libraries: [torch.optim]\n", ["--no-rewrite-libraries"], []),
    ],
)
def test_library_depth_defaults_to_torch_nn_modules_utils_and_init(project: Path, config: str, flags: list[str], libraries: list[str]):
    (project / "cfg.yaml").write_text(config)
    proc = tc(["cfg.yaml", "--only-instr", "--output-dir", "out", *flags], project)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((project / "out" / "run.json").read_text())
    assert info["config"]["rewrite_libraries"] == info["runtime"]["rewrite_libraries"] == libraries


def test_a_program_that_cannot_import_torch_gets_no_default_depth(project: Path, monkeypatch):
    from traincheck_rewrite.config import default_libraries

    assert default_libraries(str(project)) == ("torch.nn.modules", "torch.nn.utils", "torch.nn.init")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "torch").is_dir()])
    assert default_libraries(str(project)) == ()


def test_paths_in_the_config_are_relative_to_the_config_file(tmp_path: Path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "cfg.yaml").write_text(f"pyscript: {FIXTURES / 'args' / 'train.py'}\nargs: ['--epochs', '1']\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "script.py").write_text("print('relative')\n")
    (conf_dir / "rel.yaml").write_text("pyscript: ../elsewhere/script.py\n")
    proc = run_tc([str(conf_dir / "rel.yaml")], tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "relative\n", proc.stderr


def test_only_instr_writes_without_running_or_importing_torch(project: Path):
    (project / "train.py").write_text("import sys\nprint('ran')\n" + TRAIN)
    code = (
        "import sys, runpy; sys.argv = ['tc-rewrite', '--pyscript', 'train.py', '--only-instr', '--output-dir', 'out',"
        " '--rewrite-libraries', 'torch.optim'];"
        "import traincheck_rewrite.cli as c\n"
        "try:\n    c.main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ran" not in proc.stdout
    run = project / "out"
    assert {p.name for p in run.iterdir()} == {"train.py", "run.json", "sites.json", "instrumentation.diff", "original_sources"}
    assert (run / "original_sources" / "train.py").read_text() == (project / "train.py").read_text()
    assert json.loads((run / "run.json").read_text())["status"] == "instrumented"


def test_unparseable_pyscript_names_file_and_line_and_leaves_nothing(project: Path):
    (project / "train.py").write_text("x = 1\ndef broken(:\n")
    proc = tc(["--pyscript", "train.py", "--output-dir", "out"], project)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "train.py:2:" in proc.stderr
    assert not (project / "out").exists()
