"""Library depth (rewrite_libraries), through the real CLI on real training scripts: calls inside torch.optim and
torch.nn are logged inside the user's call that makes them, pointing at the library's own lines; import time is
quiet; torch.compile and TorchScript programs print what they print plainly; concurrent runs share one cache."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT, run_plain, run_tc
from traincheck_rewrite.runtime import codecache
from traincheck_rewrite.trace import read_records

DEPTH = ["--rewrite-libraries", "torch.optim", "--rewrite-libraries", "torch.nn.modules",
         "--rewrite-libraries", "torch.nn.functional"]  # fmt: skip
TORCH_ROOT = Path(importlib.util.find_spec("torch").submodule_search_locations[0]).parent
STEP = "torch.optim.sgd.SGD.step"
PARAMETERS = {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}
MODEL_CALL = "torch.nn.modules.container.Sequential.forward"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session's runs, shared by the xdist workers (it is safe to share): the first run pays for
    the rewrite, the others load it."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "rewrite-cache"


def depth_run(fixture: str, out: Path, cache: Path, extra: tuple[str, ...] = ()):
    result = run_tc(
        [str(FIXTURES / fixture / "config.yaml"), *DEPTH, *extra], out, cwd=FIXTURES / fixture,
        env_extra={"TC_REWRITE_CACHE_DIR": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def mlp_records(tmp_path_factory, cache_dir) -> list[dict]:
    return list(read_records(depth_run("mlp", tmp_path_factory.mktemp("mlp"), cache_dir).run_dir))


def calls(records: list[dict]) -> dict[int, tuple[dict, dict]]:
    """func_call_id -> (pre, post) of every completed call."""
    pre = {r["func_call_id"]: r for r in records if r["type"] == "function_call (pre)"}
    return {r["func_call_id"]: (pre[r["func_call_id"]], r) for r in records
            if r["type"].startswith("function_call (post") and r["func_call_id"] in pre}  # fmt: skip


def window(records: list[dict], call: tuple[dict, dict], kind: str = "function_call (pre)") -> list[dict]:
    """Records of `kind` strictly inside the call's (pre, post) time window, as TrainCheck's engine nests them: same
    process, and for API records the same thread."""
    pre, post = call
    return [r for r in records if r["type"] == kind and r["process_id"] == pre["process_id"]
            and (kind == "state_change" or r["thread_id"] == pre["thread_id"]) and pre["time"] < r["time"] < post["time"]]  # fmt: skip


def user_calls(records: list[dict], function: str) -> list[tuple[dict, dict]]:
    return [c for c in calls(records).values() if c[0]["function"] == function and isinstance(c[0]["site"], int)]


def library_line(site: str) -> str:
    """The text at a library site "torch/optim/sgd.py:123:8", from the installed file."""
    path, line, col = site.rsplit(":", 2)
    return (TORCH_ROOT / path).read_text().splitlines()[int(line) - 1][int(col) :]


def test_optimizer_step_window_holds_its_tensor_updates_and_the_parameter_changes(mlp_records):
    steps = user_calls(mlp_records, STEP)
    assert len(steps) == 20
    by_id = {r["func_call_id"]: r for r in mlp_records if r["type"] == "function_call (pre)"}
    assert sum(r["function"] == STEP for r in by_id.values()) == 20  # its wrappers calling the step they wrap add none
    for step in steps:
        inner = window(mlp_records, step)
        updates = [r for r in inner if r["function"].startswith("torch._foreach_") or r["function"] == "torch.Tensor.add_"]
        assert updates, sorted({r["function"] for r in inner})
        changed = {r["var_name"] for r in window(mlp_records, step, "state_change")}
        assert changed == PARAMETERS
        for r in inner:  # each inner call's parents lead to the user's step call
            parent = r["parent_id"]
            while parent is not None and parent != step[0]["func_call_id"]:
                parent = by_id[parent]["parent_id"]
            assert parent == step[0]["func_call_id"], r
        for r in updates:
            assert r["site"].startswith("torch/optim/") and "_(" in library_line(r["site"]), r["site"]


def in_place_updates(records: list[dict], step: tuple[dict, dict]) -> list[tuple[dict, dict]]:
    """The `Tensor.add_` calls made inside an optimizer step's window (SGD's update of each parameter)."""
    return [c for c in calls(records).values()
            if c[0]["function"] == "torch.Tensor.add_" and step[0]["time"] < c[0]["time"] < step[1]["time"]]  # fmt: skip


def test_with_torch_optim_rewritten_each_parameter_change_of_a_step_is_recorded_once_in_the_optimizers_public_call(tmp_path, cache_dir):
    """With torch.optim depth (and track_inner_updates off, its default): the step's in-place updates are logged, but
    a change is recorded by the check of the optimizer's public call that encloses it (the engine never takes a tensor
    method or a private function as a containing call), once per parameter and step, not around each update."""
    result = run_tc([str(FIXTURES / "mlp" / "config.yaml"), "--rewrite-libraries", "torch.nn.modules", "--rewrite-libraries",
                     "torch.optim"], tmp_path / "out", cwd=FIXTURES / "mlp", env_extra={"TC_REWRITE_CACHE_DIR": str(cache_dir)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = list(read_records(result.run_dir))
    steps = user_calls(records, STEP)
    assert len(steps) == 20
    for step in steps:
        changes = window(records, step, "state_change")
        assert sorted(r["var_name"] for r in changes) == sorted(PARAMETERS)  # each parameter once
        assert {r["dump_loc"] for r in changes} == {"torch.optim.sgd.sgd"}  # the public function inside SGD.step
        updates = in_place_updates(records, step)
        assert updates  # the updates themselves are still logged
        assert [r for add in updates for r in window(records, add, "state_change")] == []


def test_with_track_inner_updates_each_change_is_attributed_to_the_in_place_update_that_made_it(tmp_path, cache_dir):
    records = list(read_records(depth_run("mlp", tmp_path, cache_dir, ("--track-inner-updates",)).run_dir))
    steps = user_calls(records, STEP)
    assert len(steps) == 20
    for step in steps:
        changed = {r["var_name"] for r in window(records, step, "state_change")}
        assert changed == PARAMETERS
        changed_by_add = {r["var_name"] for add in in_place_updates(records, step) for r in window(records, add, "state_change")}
        assert changed_by_add == changed


def test_model_call_window_holds_each_forward_and_its_functional_calls(mlp_records):
    model_calls = user_calls(mlp_records, MODEL_CALL)
    assert len(model_calls) == 20
    for call in model_calls:
        inner = [r["function"] for r in window(mlp_records, call)]
        assert inner.count("torch.nn.modules.container.Sequential.forward") == 0  # `forward_call` is this call, logged once
        assert inner.count("torch.nn.modules.linear.Linear.forward") == 2
        assert inner.count("torch.nn.modules.activation.ReLU.forward") == 1
        assert inner.count("torch.nn.functional.relu") == 1
        assert inner.count("torch._C._nn.linear") == 2  # what F.linear is
    forward = next(r for r in mlp_records if r.get("function") == "torch.nn.modules.linear.Linear.forward")
    assert forward["site"].startswith("torch/nn/modules/container.py:") and "module(" in library_line(forward["site"])


def test_a_nested_module_of_the_same_class_is_its_own_call(tmp_path, cache_dir):
    """Only a wrapper reaching the open call's own object is folded into it: an inner Sequential is another call."""
    (tmp_path / "nested.py").write_text(
        "import torch\nimport torch.nn as nn\n"
        "model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.ReLU())\n"
        "for _ in range(3):\n    model(torch.ones(1, 2))\n"
    )
    result = run_tc(["--pyscript", str(tmp_path / "nested.py"), *DEPTH], tmp_path / "out", cwd=tmp_path,
                    env_extra={"TC_REWRITE_CACHE_DIR": str(cache_dir)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = list(read_records(result.run_dir))
    by_id = {r["func_call_id"]: r for r in records if r["type"] == "function_call (pre)"}
    sequential = [r for r in by_id.values() if r["function"] == "torch.nn.modules.container.Sequential.forward"]
    outer = [r for r in sequential if isinstance(r["site"], int)]
    inner = [r for r in sequential if not isinstance(r["site"], int)]
    assert len(outer) == len(inner) == 3  # neither folded away nor logged twice through _call_impl's forward_call
    assert {by_id[r["parent_id"]]["function"] for r in inner} == {"torch.nn.modules.container.Sequential.forward"}
    assert {r["parent_id"] for r in inner} == {r["func_call_id"] for r in outer}
    assert sum(r["function"] == "torch.nn.modules.linear.Linear.forward" for r in by_id.values()) == 3


def test_the_recorders_own_library_calls_are_not_logged(mlp_records):
    # Model tracking walks named_parameters() (library code, whose inner calls are logged); the script's own two
    # parameters() calls (for the optimizer, for the checksum) are the only walks that may show.
    walks = [r for r in mlp_records if r["type"] == "function_call (pre)" and r["function"].endswith("._named_members")]
    assert len(walks) == 2


def test_library_calls_made_at_import_time_are_logged_only_when_asked(mlp_records, tmp_path, cache_dir):
    def before_the_first_user_call(records):
        """Library calls logged before the script's first call (made after its imports): import time."""
        api = [r for r in records if r["type"] == "function_call (pre)"]
        first = min(r["time"] for r in api if isinstance(r["site"], int))
        return [r for r in api if r["time"] < first]

    assert before_the_first_user_call(mlp_records) == []
    loud = list(read_records(depth_run("mlp", tmp_path, cache_dir, ("--log-import-time-calls",)).run_dir))
    import_time = before_the_first_user_call(loud)
    assert import_time and all(isinstance(r["site"], str) and r["meta_vars"]["stage"] == "init" for r in import_time)


def descendants(records: list[dict], function: str) -> list[tuple[dict, set[str]]]:
    """Each logged call of `function`, with the names of every call logged inside it (through `parent_id`)."""
    pre = [r for r in records if r["type"] == "function_call (pre)"]
    children: dict[int, list[dict]] = {}
    for r in pre:
        children.setdefault(r["parent_id"], []).append(r)

    def below(call_id: int) -> set[str]:
        return {c["function"] for c in children.get(call_id, [])}.union(*(below(c["func_call_id"]) for c in children.get(call_id, [])))

    return [(r, below(r["func_call_id"])) for r in pre if r["function"] == function]


def test_default_depth_logs_what_runs_inside_nn_utils(tmp_path, cache_dir):
    """torch.nn.utils is rewritten by default: what spectral/weight norm's hooks, the parametrizations and gradient
    clipping run each step is in the trace (spectral norm's power iteration is what pytorch-51800 is about), and the
    program prints what it prints plainly."""
    fixture = FIXTURES / "nn_utils"
    plain = run_plain([sys.executable, "train.py"], cwd=fixture)
    traced = run_tc([str(fixture / "config.yaml")], tmp_path, cwd=fixture, env_extra={"TC_REWRITE_CACHE_DIR": str(cache_dir)})
    assert plain.returncode == traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    records = list(read_records(traced.run_dir))
    utils = "torch.nn.utils."

    spectral = descendants(records, utils + "spectral_norm.SpectralNorm.compute_weight")
    training = [inner for call, inner in spectral if call["meta_vars"]["stage"] == "training"]
    evaluation = [inner for call, inner in spectral if call["meta_vars"]["stage"] == "evaluation"]
    assert len(training) == 5 and all({"torch.nn.functional.normalize", "torch.mv", "torch.dot"} <= inner for inner in training)
    assert len(evaluation) == 1 and "torch.nn.functional.normalize" not in evaluation[0] and "torch.dot" in evaluation[0]
    assert all("torch._weight_norm" in inner for _, inner in descendants(records, utils + "weight_norm.WeightNorm.compute_weight"))
    power = [inner for call, inner in descendants(records, utils + "parametrizations._SpectralNorm.forward")
             if call["meta_vars"]["stage"] == "training"]  # fmt: skip
    assert len(power) == 5 and all(utils + "parametrizations._SpectralNorm._power_method" in inner for inner in power)
    assert all("torch.matrix_exp" in inner for _, inner in descendants(records, utils + "parametrizations._Orthogonal.forward"))
    clipped = [inner for call, inner in descendants(records, utils + "clip_grad.clip_grad_norm_") if isinstance(call["site"], int)]
    assert len(clipped) == 5
    assert all({utils + "clip_grad._get_total_norm", utils + "clip_grad._clip_grads_with_norm_"} <= inner for inner in clipped)


# What each fixture checks about itself, printed in both runs: dynamo made one graph and no graph break (fullgraph=True
# would fail on one anyway); inspect.getsource of a rewritten library function is the installed source.
SELF_CHECKS = {"compiled": "graphs 1 graph_breaks 0", "scripted": "getsource unchanged: True"}


@pytest.mark.parametrize("fixture", list(SELF_CHECKS))
def test_compiled_and_scripted_programs_print_what_they_print_plainly(fixture, tmp_path, cache_dir):
    plain = run_plain([sys.executable, "train.py"], cwd=FIXTURES / fixture)
    assert plain.returncode == 0 and SELF_CHECKS[fixture] in plain.stdout, plain.stderr
    traced = depth_run(fixture, tmp_path, cache_dir)
    assert traced.stdout == plain.stdout
    records = list(read_records(traced.run_dir))
    steps = user_calls(records, STEP)
    assert len(steps) == 5 and all(any(isinstance(r["site"], str) for r in window(records, s)) for s in steps)


def test_modules_imported_before_tracing_starts_are_named_in_one_warning(tmp_path, cache_dir):
    # The first statement is compound with no line before it: the hook attaches at the first call, after `import torch`.
    (tmp_path / "late.py").write_text("for _ in range(1):\n    import torch\nprint(torch.ones(2).sum().item())\n")
    result = run_tc(["--pyscript", str(tmp_path / "late.py"), *DEPTH], tmp_path / "out", cwd=tmp_path,
                    env_extra={"TC_REWRITE_CACHE_DIR": str(cache_dir)})  # fmt: skip
    assert result.returncode == 0 and result.stdout == "2.0\n", result.stderr
    warnings = [line for line in result.stderr.splitlines() if "imported before tracing started" in line]
    assert len(warnings) == 1 and "torch.nn.functional" in warnings[0] and "torch.optim" in warnings[0]


def test_concurrent_cold_runs_leave_one_valid_cache_and_a_damaged_entry_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "traincheck_rewrite", str(FIXTURES / "mlp" / "config.yaml"),
               "--rewrite-libraries", "torch.optim", "--output-dir"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_REWRITE_")}
    env["TC_REWRITE_CACHE_DIR"] = str(cache)
    procs = [subprocess.Popen([*command, str(tmp_path / f"out{i}")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    state = codecache.info(cache)
    assert state["entries"] > 0 and state["damaged"] == 0
    assert not list(cache.glob(".*.tmp"))
    for out in ("out0", "out1"):
        run_dir = tmp_path / out
        records = list(read_records(run_dir))
        steps = user_calls(records, STEP)
        assert len(steps) == 20 and all(any(isinstance(r["site"], str) for r in window(records, s)) for s in steps)

    entry = sorted(cache.glob("*" + codecache.SUFFIX))[0]
    entry.write_bytes(entry.read_bytes()[:-7])
    assert codecache.info(cache)["damaged"] == 1
    proc = subprocess.run([*command, str(tmp_path / "out2")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rebuilt = codecache.info(cache)
    assert rebuilt["entries"] == state["entries"] and rebuilt["damaged"] == 0


def test_the_finders_shortcut_passes_every_module_the_full_match_would_claim():
    """`LibraryFinder._may_claim` turns most imports away with a few set look-ups; it must never turn away one that
    the names (plain, patterns, their parent packages) would claim."""
    from traincheck_rewrite.runtime.libraries import FRAMEWORKS, LibraryFinder, covered, framework_loops

    finder = LibraryFinder(("torch.optim", "torch.nn.modules", "mypkg.*.layers"), ("torch",), False, True)
    claimed = lambda name: (framework_loops(name) is not None or covered(name, finder.libraries)  # noqa: E731
                            or name in finder.parents)  # fmt: skip
    names = ["torch", "torch.optim", "torch.optim.adam", "torch.optimx", "torch.nn", "torch.nn.modules.linear",
             "torch.nn.functional", "torch._dynamo.utils", "torch.amp.grad_scaler", "torch.amp", "numpy.linalg",
             "transformers", "transformers.models.bert.modeling_bert", "transformers.trainer", "lightning.pytorch.loops.fit_loop",
             "mypkg", "mypkg.a.layers", "mypkg.a.layers.dense", "mypkgx.a.layers", "sympy.core"]  # fmt: skip
    names += [pattern.replace("*", "x") for pattern, _ in FRAMEWORKS]
    for name in names:
        assert finder._may_claim(name) or not claimed(name), name
    assert not finder._may_claim("numpy.linalg") and not finder._may_claim("torch._dynamo.utils")
