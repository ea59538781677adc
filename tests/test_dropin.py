"""Drop-in for traincheck-collect 0.2.0: its flags, its config keys, its `--output-dir` meaning, and the commands of its
collector documentation run unchanged, with the outputs where its users look for them (TrainCheck's engine pointed
at the output folder)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

TC = [sys.executable, "-m", "traincheck_rewrite"]
# The options `traincheck-collect --help` lists (traincheck==0.2.0); test_every_flag_of_the_real_collector_is_listed
# compares this list with the real one.
TRAINCHECK_FLAGS = {
    "--use-config": [], "--config": ["cfg.yaml"], "-p": ["train.py"], "--pyscript": ["train.py"], "-s": ["run.sh"],
    "--shscript": ["run.sh"], "-a": [], "--copy-all-files": [], "--output-dir": ["out"], "--only-instr": [],
    "--instr-descriptors": [], "--profiling": [], "-d": [], "--debug-mode": [], "-t": ["torch"],
    "--modules-to-instr": ["torch"], "--disable-scan-proxy-in-args": [], "--API-dump-stack-trace": [], "-i": [],
    "--invariants": [], "--use-full-instr": [], "--models-to-track": ["model"], "--model-tracker-style": ["proxy"],
    "--tensor-dump-format": ["hash"], "--no-auto-var-instr": [], "--use-torch-compile": [],
    "--sampling-interval": ["10"], "--warm-up-steps": ["10"], "-h": [], "--help": [],
}
TRAIN = "import torch\nmodel = torch.nn.Linear(2, 1)\nprint(model(torch.ones(2)).shape)\n"


def tc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TC, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _engine() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "traincheck_venv.sh")], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin"


def test_output_dir_is_the_run_folder_created_if_missing_and_refused_if_not_empty(tmp_path: Path):
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "cfg.yaml").write_text("pyscript: train.py\nmodels_to_track: [model]\noutput_dir: from_config\n")
    made = tc(["--pyscript", "train.py", "--models-to-track", "model", "--output-dir", "deep/trace_training"], tmp_path)
    assert made.returncode == 0, made.stderr
    run = tmp_path / "deep" / "trace_training"
    assert {"train.py", "run.json", "program_output.txt", "traces"} <= {p.name for p in run.iterdir()}
    assert [p.name for p in run.glob("trace_API_*.log")] and [p.name for p in run.glob("trace_VAR_*.log")]
    assert "torch.Size([1])" in (run / "program_output.txt").read_text()
    before = sorted(p.relative_to(run) for p in run.rglob("*"))

    again = tc(["--pyscript", "train.py", "--output-dir", "deep/trace_training"], tmp_path)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.splitlines() == [
        f"tc-rewrite: error: output_dir: {run} exists and is not empty; give a new or empty folder"
    ]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written

    (tmp_path / "empty").mkdir()
    assert tc(["--pyscript", "train.py", "--output-dir", "empty", "--only-instr"], tmp_path).returncode == 0
    assert (tmp_path / "empty" / "run.json").is_file()
    from_config = tc(["--use-config", "--config", "cfg.yaml"], tmp_path)
    assert from_config.returncode == 0 and (tmp_path / "from_config" / "run.json").is_file(), from_config.stderr


def test_a_failed_set_up_leaves_a_given_empty_folder_empty_and_removes_one_it_made(tmp_path: Path):
    (tmp_path / "train.py").write_text("def broken(:\n")
    (tmp_path / "empty").mkdir()
    for out in ("empty", "new"):
        proc = tc(["--pyscript", "train.py", "--output-dir", out], tmp_path)
        assert proc.returncode == 2 and "train.py:1:" in proc.stderr
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "new").exists()


def test_every_flag_of_traincheck_collect_is_accepted_with_a_note_for_its_switches(tmp_path: Path):
    (tmp_path / "train.py").write_text(TRAIN)
    args = ["--pyscript", "train.py", "--only-instr"]
    for flag in ("--instr-descriptors", "--profiling", "--disable-scan-proxy-in-args", "--no-auto-var-instr", "--use-torch-compile"):
        proc = tc([*args, flag, "--output-dir", f"out{flag}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        notes = [line for line in proc.stderr.splitlines() if "note:" in line]
        key = flag[2:].replace("-", "_")
        assert len(notes) == 1 and notes[0].startswith(f"tc-rewrite: note: {key}: accepted for TrainCheck compatibility; "), proc.stderr
        assert json.loads((tmp_path / f"out{flag}" / "run.json").read_text())["config"][key] is True
    # the same switches as config keys (flag names with '_'), and argparse's several values after one flag
    (tmp_path / "tc.yml").write_text("pyscript: train.py\nprofiling: true\nno_auto_var_instr: true\n")
    proc = tc(["--use-config", "--config", "tc.yml", "--only-instr", "-d", "-a", "--use-full-instr", "--API-dump-stack-trace",
               "-t", "torch", "torch.nn", "--models-to-track", "model", "net", "--output-dir", "cfg"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "cfg" / "run.json").read_text())["config"]
    assert config["modules_to_instr"] == ["torch", "torch.nn"] and config["models_to_track"] == ["model", "net"]
    assert config["profiling"] and config["no_auto_var_instr"] and config["debug_mode"] and config["copy_all_files"]
    help_text = tc(["--help"], tmp_path).stdout
    assert all(re.search(rf"(^|[ ,]){re.escape(flag)}\b", help_text, re.M) for flag in TRAINCHECK_FLAGS), help_text


@pytest.mark.slow
def test_every_flag_of_the_real_collector_is_listed():
    proc = subprocess.run([str(_engine() / "traincheck-collect"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    options = proc.stdout.split("options:", 1)[1]
    assert set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", options)) == set(TRAINCHECK_FLAGS)


def _project(where: Path) -> Path:
    """The layout of TrainCheck's documentation example: train.py, a run.sh launching it, traincheck.yml."""
    where.mkdir(parents=True)
    shutil.copy(FIXTURES / "mlp" / "train.py", where / "train.py")
    (where / "run.sh").write_text("#!/usr/bin/env bash\npython train.py\n")
    (where / "traincheck.yml").write_text(
        "pyscript: ./train.py\nshscript: ./run.sh\nmodules_to_instr:\n  - torch\nmodels_to_track:\n  - model\n"
        "model_tracker_style: proxy\ncopy_all_files: false\noutput_dir: traincheck_trace\n"
    )
    (where / "config.yml").write_text("pyscript: train.py\nmodels_to_track: [model]\n")
    return where


def _run_doc_command(line: str, cwd: Path, engine: Path) -> subprocess.CompletedProcess:
    """A documented command line, word for word, with `traincheck-collect` being us and the engine TrainCheck's."""
    words = line.split()
    program = {"traincheck-collect": TC, "traincheck-infer": [str(engine / "traincheck-infer")],
               "traincheck-check": [str(engine / "traincheck-check")]}[words[0]]  # fmt: skip
    return subprocess.run([*program, *words[1:]], cwd=cwd, capture_output=True, text=True, timeout=900)


def _violations(cwd: Path) -> dict:
    """The checker's summary, in its default folder traincheck_checker_results_<time>/<trace folder>/."""
    (summary,) = cwd.glob("traincheck_checker_results_*/*/violations_summary.json")
    return json.loads(summary.read_text())


@pytest.mark.slow
def test_the_collector_documentation_commands_run_unchanged_and_the_engine_reads_the_output_folder(tmp_path: Path):
    engine = _engine()
    # docs/instr.md of OrderLab/TrainCheck (current): full reference collection, inference, selective collection
    # with and without explicit sampling, the config-file form, and the checker pointed at the output folder.
    ref = _project(tmp_path / "current")
    steps = [
        "traincheck-collect --pyscript train.py --models-to-track model --output-dir reference_trace",
        "traincheck-infer -f reference_trace -o invariants.json",
        "traincheck-collect --pyscript train.py --models-to-track model --invariants invariants.json --output-dir target_trace",
        "traincheck-check -f target_trace -i invariants.json",
        "traincheck-collect --use-config --config traincheck.yml",
    ]
    for line in steps:
        proc = _run_doc_command(line, ref, engine)
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
    for folder in ("reference_trace", "target_trace", "traincheck_trace"):  # the trace files, the script, its output
        names = {p.name for p in (ref / folder).iterdir()}
        assert "train.py" in names and "program_output.txt" in names, (folder, names)
        assert any(re.fullmatch(r"trace_API_(\d+_\d+|all)\.log", n) for n in names), (folder, names)
        assert "optimizer_steps 20" in (ref / folder / "program_output.txt").read_text()
    invariants = (ref / "invariants.json").read_text().splitlines()
    # what the engine learnt from our folder includes the optimizer step (tensor methods, named
    # torch._C.TensorBase.* as TrainCheck names them, are left out of most relations by traincheck 0.2.0 itself)
    assert any("SGD.step()" in json.loads(line)["text_description"] for line in invariants), invariants
    healthy = _violations(ref)
    assert healthy["violations"] == [] and healthy["first_violation_step"] is None, healthy
    target = json.loads((ref / "target_trace" / "run.json").read_text())["runtime"]
    assert target["sampling"] == {"interval": 10, "warm_up": 10} and target["select"]

    sampled = _project(tmp_path / "sampled")
    shutil.copy(ref / "invariants.json", sampled / "invariants.json")
    line = ("traincheck-collect --pyscript train.py --models-to-track model --invariants invariants.json "
            "--sampling-interval 10 --warm-up-steps 10 --output-dir target_trace")  # fmt: skip
    proc = _run_doc_command(line, sampled, engine)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run_doc_command("traincheck-check -f target_trace -i invariants.json", sampled, engine)
    assert proc.returncode == 0 and _violations(sampled)["violations"] == [], proc.stderr[-3000:]

    # the earlier docs/instr.md: the config-file forms, default folder name, --invariants and --output-dir trace_training
    old = _project(tmp_path / "earlier")
    shutil.copy(ref / "invariants.json", old / "invariants.json")
    for line in ("traincheck-collect --use-config --config config.yml",
                 "traincheck-collect --use-config --config config.yml --invariants invariants.json",
                 "traincheck-collect --use-config --config config.yml --output-dir trace_training"):  # fmt: skip
        proc = _run_doc_command(line, old, engine)
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
    default_named = sorted(p.name for p in old.glob("traincheck_run_train_torch_*"))
    assert len(default_named) == 2, default_named  # traincheck_run_<pyscript_name>_<instr_libs>_<timestamp>
    assert any((old / name / "train.py").is_file() for name in default_named)
    assert [p.name for p in (old / "trace_training").glob("trace_VAR_*.log")]
