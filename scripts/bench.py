#!/usr/bin/env python3
"""What tracing costs: the bench workloads run plainly, under tc-rewrite with each setting, and (when installed)
under TrainCheck's collector, alternating, medians; then micro-benchmarks of the hot paths.

    .venv/bin/python scripts/bench.py                   # the full run docs/benchmarks.md shows (about 20 minutes)
    .venv/bin/python scripts/bench.py --quick           # one short workload, few settings (a smoke test)
    .venv/bin/python scripts/bench.py --traincheck .venv-traincheck   # also traincheck-collect, side by side
    .venv/bin/python scripts/bench.py --traincheck .venv-traincheck --invariants   # only the invariant table

Workloads are fixtures/bench/*.py (synthetic data, CPU, long enough that training outweighs start-up). A traced
time is that of the whole command a user waits for (`tc-rewrite`: rewrite, launch, run, seal, count). Peak memory
is the largest resident set of the command and its children (wait4). Each setting's fixed cost (with --quick, the
selective one's), what a run costs whatever its length (start-up, rewrite-cache look-up, launch, seal), is a one-step
run's time less the plain one's, in its own column. Library depth: one run starts with an empty
rewrite cache (cold), the others find it full (warm). The HF Trainer fixture (frameworks rewritten by default):
its first run with an empty cache and its warm runs against the plain run. With `--traincheck`, also what
TrainCheck's engine infers from each collector's trace of a 30-step run of each workload, by relation, and the
`check` setting: the selective run checked while it runs (`--check`), with how far the checker lags behind.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_invariants  # noqa: E402  (scripts/ is no package)
BENCH = ROOT / "fixtures" / "bench"
WORKLOADS = ("mlp", "cnn", "lm")
DEPTH_LIBRARIES = ("torch.optim", "torch.nn.modules", "torch.nn.functional")
DEPTH_FLAGS = [f for lib in DEPTH_LIBRARIES for f in ("--rewrite-libraries", lib)]
# setting -> tc-rewrite flags ({w}: the workload's name)
SETTINGS = {
    "default": [],
    "sampler": ["--model-tracker-style", "sampler"],
    "stats": ["--tensor-dump-format", "stats"],  # `full` writes every tensor's values: see the micro-benchmarks
    "depth": DEPTH_FLAGS,
    "selective": ["--invariants", str(BENCH / "{w}.invariants.json")],
    # with --traincheck only: the selective run checked while it runs by TrainCheck's online checker ({tc}: its venv)
    "check": ["--invariants", str(BENCH / "{w}.invariants.json"), "--check", "--checker", "{tc}"],
}
QUICK_SETTINGS = ("default", "depth", "selective")
INVARIANT_STEPS = 30  # the runs the engine learns from: long enough for every relation, short enough to infer


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak resident KiB of a command (and the children it waited for); exit code 3 (`--check` found
    a violation) is no failure of the command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 3):
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}): {stderr.decode(errors='replace')[-500:]}")
    return elapsed, usage.ru_maxrss


def _trace_stats(run_dir: Path) -> dict:
    info = json.loads((run_dir / "run.json").read_text())
    records = info["records"]["api"] + info["records"]["state"]
    trace_bytes = sum(p.stat().st_size for p in (run_dir / "traces").iterdir())
    return {"records": records, "trace_bytes": trace_bytes, "bytes_per_record": trace_bytes / records if records else 0.0}


def _check_stats(folder: Path, pairs: int) -> dict:
    """How far TrainCheck's online checker lags behind the program (medians over the runs): the records a second it
    checks against those the program makes, and its drain: how long it runs on after the program, and how many of
    the program's steps that is."""
    runs = []
    for i in range(pairs):
        info = json.loads((folder / str(i) / "run.json").read_text())
        check, made = info["check"], info["records"]["api"] + info["records"]["state"]
        step_s = info["duration_s"] / check["program_steps"] if check.get("program_steps") else None
        runs.append({"program_rec_s": made / info["duration_s"],
                     "checker_rec_s": (check["checked_records"] or 0) / check["checker_busy_s"] if check.get("checker_busy_s") else 0.0,
                     "drain_s": check["drain_s"], "steps_behind": check["drain_s"] / step_s if step_s else None})  # fmt: skip
    return {key: statistics.median(r[key] for r in runs if r[key] is not None) for key in runs[0] if any(r[key] is not None for r in runs)}


def _traincheck_stats(out: Path) -> dict:
    files = [p for p in out.iterdir() if p.name.startswith(("trace_", "proxy_log"))]
    records = sum(sum(1 for _ in p.open("rb")) for p in files)
    trace_bytes = sum(p.stat().st_size for p in files)
    return {"records": records, "trace_bytes": trace_bytes, "bytes_per_record": trace_bytes / records if records else 0.0}


def _fixed_cost(script: Path, command, folder: Path, env: dict[str, str], pairs: int) -> float:
    """What a run costs whatever its length (start-up, rewrite-cache look-up, launch, seal, export): the median over
    `pairs` of a one-step run's wall time less the plain one-step run's just before it."""
    env = {**env, "BENCH_STEPS": "1"}  # what the workloads read when given no --steps (TrainCheck's collector gives none)
    differences = []
    for i in range(pairs):
        plain = _run([sys.executable, str(script)], BENCH, env)[0]
        differences.append(_run(command(folder / f"one-step-{i}"), BENCH, env)[0] - plain)
    return statistics.median(differences)


def bench_workload(name: str, settings: list[str], pairs: int, steps: int | None, traincheck: Path | None,
                   collector: bool = True) -> list[dict]:
    """Rows for one workload: plain, then each setting, then TrainCheck; each setting's runs alternate with plain."""
    script = BENCH / f"{name}.py"
    script_args = ["--", "--steps", str(steps)] if steps else []
    plain_cmd = [sys.executable, str(script), *script_args[1:]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "TC_REWRITE_CACHE_DIR": str(tmp / "cache")}
        plain = [_run(plain_cmd, BENCH)]
        variants = []  # (setting, command for an output folder)
        for setting in settings:
            if setting == "check" and traincheck is None:
                continue
            flags = [f.format(w=name, tc=traincheck) for f in SETTINGS[setting]]
            base = [sys.executable, "-m", "traincheck_rewrite", "--pyscript", str(script), "--models-to-track", "model", *flags]
            variants.append((setting, lambda out, args=script_args, base=base: [*base, "--output-dir", str(out), *args]))
        if traincheck is not None and collector:  # on a copy: it writes its instrumented script beside the original
            (tmp / "src").mkdir()
            copy = tmp / "src" / script.name
            copy.write_bytes(script.read_bytes())
            base = [str(traincheck / "bin" / "traincheck-collect"), "--pyscript", str(copy), "--models-to-track", "model"]
            variants.append(("traincheck-collect", lambda out, args=script_args, base=base: [*base, "--output-dir", str(out), *args]))
        for setting, command in variants:
            folder = tmp / setting
            cold = _run(command(folder / "cold"), BENCH, env) if setting == "depth" else None  # fills the rewrite cache
            runs = []
            for i in range(pairs):
                plain.append(_run(plain_cmd, BENCH))
                runs.append(_run(command(folder / str(i)), BENCH, env))
            last = folder / str(pairs - 1)
            stats = _traincheck_stats(last) if setting == "traincheck-collect" else _trace_stats(last)
            if setting == "check":
                stats.update(_check_stats(folder, pairs))
            wall = statistics.median(r[0] for r in runs)
            row = {"workload": name, "setting": setting, "wall_s": wall, "peak_mib": max(r[1] for r in runs) / 1024, **stats,
                   "records_per_s": stats["records"] / wall}
            if cold is not None:
                row["cold_s"] = cold[0]
            if steps is None or setting == "selective":  # --quick: the selective run's only
                row["fixed_s"] = _fixed_cost(script, lambda out, command=command: command(out, []), folder, env, pairs)
            rows.append(row)
        p = statistics.median(r[0] for r in plain)
        rows.insert(0, {"workload": name, "setting": "plain", "wall_s": p, "peak_mib": max(r[1] for r in plain) / 1024,
                        "records": 0, "trace_bytes": 0, "bytes_per_record": 0.0, "records_per_s": 0.0})
        for row in rows:
            row["ratio"] = row["wall_s"] / p
    return rows


def invariant_table(workloads: list[str], traincheck: Path) -> list[dict]:
    """What the engine learns from each collector: TrainCheck's `traincheck-infer` on a 30-step run of each
    workload, traced by `tc-rewrite` with its default settings (exported) and by TrainCheck's collector (the same
    script, `--models-to-track model`); invariants counted by relation, and TrainCheck's again without its set-up
    invariants (scripts/setup_invariants.py: the calls torch makes while it sets itself up)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="tc-bench-inv-") as tmp:
        for name in workloads:
            work = Path(tmp) / name
            (work / "src").mkdir(parents=True)
            script = work / "src" / f"{name}.py"  # TrainCheck's collector writes its instrumented copy beside it
            script.write_bytes((BENCH / f"{name}.py").read_bytes())
            env = {**os.environ, "BENCH_STEPS": str(INVARIANT_STEPS), "TC_REWRITE_CACHE_DIR": str(Path(tmp) / "cache")}
            ours, export, theirs = work / "ours", work / "ours-export", work / "theirs"
            tc = [sys.executable, "-m", "traincheck_rewrite"]
            _run([*tc, "--pyscript", str(script), "--models-to-track", "model", "--output-dir", str(ours)], work, env)
            _run([*tc, "trace", "export", str(ours), "--to", str(export)], work, env)
            collect_env = {**env, "PATH": f"{traincheck / 'bin'}{os.pathsep}{env.get('PATH', '')}"}  # its python
            collect = [str(traincheck / "bin" / "traincheck-collect"), "--pyscript", str(script), "--models-to-track", "model"]
            _run([*collect, "--output-dir", str(theirs)], work / "src", collect_env)
            for collector, folder in (("tc-rewrite", export), ("traincheck-collect", theirs)):
                out = work / f"{collector}.invariants.json"
                _run([str(traincheck / "bin" / "traincheck-infer"), "-f", str(folder), "-o", str(out)], work)
                invariants = setup_invariants.read_invariants(out)
                rows.append({"workload": name, "collector": collector,
                             "relations": dict(collections.Counter(inv["relation"] for inv in invariants))})  # fmt: skip
                if collector == "traincheck-collect":
                    rows.append({"workload": name, "collector": "traincheck-collect without set-up",
                                 "relations": dict(setup_invariants.without_setup(invariants))})  # fmt: skip
    return rows


def _print_invariants(rows: list[dict]) -> None:
    relations = sorted({r for row in rows for r in row["relations"]})
    columns = [(row["workload"], row["collector"]) for row in rows]
    short = {"tc-rewrite": "ours", "traincheck-collect": "tc", "traincheck-collect without set-up": "tc no-setup"}
    print(f"invariants by relation (traincheck-infer on {INVARIANT_STEPS}-step runs; tc-rewrite at default settings;")
    print("tc no-setup: TrainCheck's without its set-up invariants, scripts/setup_invariants.py)")
    print(f"{'relation':<32}" + "".join(f"{w + ' ' + short[c]:>17}" for w, c in columns))
    for relation in [*relations, "total"]:
        cells = [sum(row["relations"].values()) if relation == "total" else row["relations"].get(relation, 0) for row in rows]
        print(f"{relation:<32}" + "".join(f"{cell:>17}" for cell in cells))


def rewrite_benchmarks() -> list[tuple[str, float, str]]:
    """Rewrite speed in lines per second, and `--only-instr` on a 1,000-line script, interpreter start included."""
    from traincheck_rewrite.rewrite import rewrite_source

    block = [
        "def step_{i}(model, optimizer, x, y):",
        "    # one training step, written out",
        "    optimizer.zero_grad()",
        "    loss = F.cross_entropy(model(x), y)",
        "    loss.backward()",
        "    optimizer.step()",
        "    return torch.clamp(loss.detach(), 0, 10).item()",
        "",
    ]
    lines = ["import torch", "import torch.nn.functional as F", ""]
    i = 0
    while len(lines) < 1000:
        lines += [line.format(i=i) for line in block]
        i += 1
    source = "\n".join(lines[:1000]) + "\n"
    start = time.perf_counter()
    rewrite_source(source, "train.py", models=("model",))
    per_line = (time.perf_counter() - start) / 1000
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train.py"
        script.write_text(source)
        def cmd(run: str) -> list[str]:  # each run writes a new run folder
            return [sys.executable, "-m", "traincheck_rewrite", "--pyscript", str(script), "--only-instr", "--output-dir", f"{tmp}/{run}"]

        # cold: each run with an empty rewrite cache; warm: the script's rewrite comes from the cache
        cold = statistics.median(_run(cmd(f"cold{i}"), Path(tmp), {**os.environ, "TC_REWRITE_CACHE_DIR": f"{tmp}/cache{i}"})[0] for i in range(3))
        warm_env = {**os.environ, "TC_REWRITE_CACHE_DIR": f"{tmp}/cache0"}
        warm = statistics.median(_run(cmd(f"warm{i}"), Path(tmp), warm_env)[0] for i in range(3))
    return [
        ("rewrite speed", 1 / per_line, "lines per s"),
        ("--only-instr, 1,000-line script, cold cache", cold, "s wall"),
        ("--only-instr, 1,000-line script, warm cache", warm, "s wall"),
    ]


def framework_benchmark(pairs: int) -> list[tuple[str, float, str]]:
    """The HF Trainer fixture (fixtures/frameworks/hf_trainer.py, default settings): a first run, which rewrites the
    framework's modules into an empty cache, and warm runs, each against the plain run (alternating, medians)."""
    folder = ROOT / "fixtures" / "frameworks"
    plain_cmd = [sys.executable, str(folder / "hf_trainer.py")]
    with tempfile.TemporaryDirectory(prefix="tc-bench-hf-") as tmp:
        env = {**os.environ, "TC_REWRITE_CACHE_DIR": f"{tmp}/cache"}

        def traced(out: str) -> list[str]:
            return [sys.executable, "-m", "traincheck_rewrite", str(folder / "hf_trainer.yaml"), "--output-dir", f"{tmp}/{out}"]

        plain = [_run(plain_cmd, folder)[0]]
        cold = _run(traced("cold"), folder, env)[0]
        warm = []
        for i in range(pairs):
            plain.append(_run(plain_cmd, folder)[0])
            warm.append(_run(traced(str(i)), folder, env)[0])
    p = statistics.median(plain)
    return [
        ("HF Trainer fixture, plain", p, "s wall"),
        ("HF Trainer fixture, first run (cold cache)", cold - p, "s more than plain"),
        ("HF Trainer fixture, cold cache ratio", cold / p, "x plain"),
        ("HF Trainer fixture, warm cache ratio", statistics.median(warm) / p, "x plain"),
    ]


def _per_call(recorder, trace_dir: str, fn, args: tuple, mode: str, n: int) -> float:
    """Seconds per call of `n` calls, everything they record encoded and written within the time. mode: `plain`
    (`fn(*args)`, no hook), `hook` (through the hook, outside any loop), `training` (inside a training loop's step),
    `before` (inside a loop before it is known to be the training loop: the records are held, then relabelled when its
    first optimizer step makes it known, which is timed too)."""
    recorder.start(trace_dir, ("torch",))
    # torch, imported before the recorder started, has loaded multiprocessing.spawn: the recorder took this process
    # for a spawned DataLoader worker and would send its first 1000 calls the general way to learn a worker id. A
    # run's main process starts the recorder before torch and takes the plain path from its first call.
    recorder._state.worker_check, recorder._state.plain = 0, True
    hook, steps = recorder.hook, recorder._state.steps
    if mode in ("training", "before"):
        steps.iteration(7, time.monotonic_ns())
        if mode == "training":
            steps.optimizer_step()
            steps.iteration(7, time.monotonic_ns())
    start = time.process_time()  # CPU time of the process (the flusher thread included): less noisy than wall time here
    if mode == "plain":
        for _ in range(n):
            fn(*args)
    else:
        for _ in range(n):
            hook(1, fn)(*args)
    if mode == "before":
        steps.optimizer_step()
    recorder.flush_all()
    elapsed = time.process_time() - start
    recorder.flush_all(close=True)
    return elapsed / n


CALL_CASES = (  # (label, function, mode, plain counterpart)
    ("torch.add(x, y), no hook", "add", "plain", None),
    ("hook, call not logged (user function)", "user", "hook", None),
    ("logged call, no arguments, in a training loop", "dtype", "training", None),
    ("logged call, two tensor arguments, in a training loop", "add", "training", "torch.add(x, y), no hook"),
    ("logged call, two tensor arguments, before the loop is known", "add", "before", "torch.add(x, y), no hook"),
)


def call_benchmarks(repeats: int, n: int = 8000) -> list[tuple[str, float, str]]:
    """The cost of a call through the hook: each case timed `repeats` times, cases alternating (the machine is
    shared: neighbours move all cases alike), medians; a logged call's cost is also given as what it adds to the
    plain call in the same rounds. `n` stays below the step counter's hold limit (20,000 records)."""
    import torch

    from traincheck_rewrite.runtime import recorder

    torch.set_num_threads(1)
    x, y = torch.ones(8, 8), torch.ones(8, 8)

    def user(v):
        return v

    calls = {"add": (torch.add, (x, y)), "user": (user, (1,)), "dtype": (torch.get_default_dtype, ())}
    times: dict[str, list[float]] = {label: [] for label, *_ in CALL_CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats + 1):  # the first round warms up
            for label, name, mode, _ in CALL_CASES:
                fn, args = calls[name]
                per = _per_call(recorder, os.path.join(tmp, f"{r}-{len(times[label])}-{name}-{mode}"), fn, args, mode, n)
                if r:
                    times[label].append(per)
    recorder._state = None
    out = []
    for label, _, _, plain in CALL_CASES:
        out.append((label, statistics.median(times[label]) * 1e6, "us per call"))
        if plain is not None:
            added = [t - p for t, p in zip(times[label], times[plain])]
            out.append((f"  what it adds to the plain call", statistics.median(added) * 1e6, "us per call"))
    return out


def micro_benchmarks(repeats: int) -> list[tuple[str, float, str]]:
    """In-process costs: calls through the hook, and model tracking per optimizer step for a ~1M-parameter model."""
    import torch

    from traincheck_rewrite.runtime.tracking import Tracker

    out = call_benchmarks(5 * repeats)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Linear(1000, 24))  # 1,025,024 parameters
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model(torch.randn(4, 1000)).sum().backward()
    x = torch.randn(4, 1000)
    for fmt in ("hash", "stats", "full"):
        tracker = Tracker(fmt, "proxy")
        tracker.track("model", model, lambda record: None)
        times = []
        for _ in range(3 * repeats):  # a training step's two checks: after backward (every grad changed), after step (every parameter)
            model(x).sum().backward()
            start = time.perf_counter()
            tracker.check("backward", lambda record: None)
            elapsed = time.perf_counter() - start
            optimizer.step()
            start = time.perf_counter()
            tracker.check("step", lambda record: None)
            times.append(elapsed + time.perf_counter() - start)
        out.append((f"tracking {params:,} parameters, {fmt}", statistics.median(times) * 1e3, "ms per step"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the MLP for 50 steps, settings default/depth/selective, one pair")
    parser.add_argument("--pairs", type=int, default=None, help="alternating plain/traced pairs per setting [3]")
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default: all")
    parser.add_argument("--setting", action="append", choices=list(SETTINGS), help="repeatable; default: all")
    parser.add_argument("--no-traincheck-collect", action="store_true", help="with --traincheck: its engine and checker only (no collector row, no invariant table)")
    parser.add_argument("--traincheck", type=Path, metavar="VENV", help="a virtualenv with traincheck==0.2.0 (scripts/traincheck_venv.sh)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--calls", type=int, metavar="ROUNDS", help="only the per-call micro-benchmark, this many rounds")
    parser.add_argument("--invariants", action="store_true", help="only the invariant table (needs --traincheck)")
    args = parser.parse_args()
    if args.calls:
        for what, value, unit in call_benchmarks(args.calls):
            print(f"{what:<62} {value:>9.2f} {unit}")
        return
    workloads = args.workload or (["mlp"] if args.quick else list(WORKLOADS))
    if args.invariants:
        if args.traincheck is None:
            parser.error("--invariants needs --traincheck VENV (its engine infers them)")
        _print_invariants(invariant_table(workloads, args.traincheck.resolve()))
        return
    settings = args.setting or list(QUICK_SETTINGS if args.quick else SETTINGS)
    pairs = args.pairs or (1 if args.quick else 3)
    traincheck = args.traincheck.resolve() if args.traincheck else None
    rows = [row for w in workloads
            for row in bench_workload(w, settings, pairs, 50 if args.quick else None, traincheck, not args.no_traincheck_collect)]
    micro = micro_benchmarks(1 if args.quick else 3) + rewrite_benchmarks()
    if not args.quick:
        micro += framework_benchmark(pairs)
    invariants = invariant_table(workloads, traincheck) if traincheck is not None and not (args.quick or args.no_traincheck_collect) else []
    if args.json:
        print(json.dumps({"workloads": rows, "micro": [dict(zip(("what", "value", "unit"), m)) for m in micro],
                          "invariants": invariants}, indent=2))
        return
    print(f"{'workload':<6} {'setting':<19} {'wall s':>7} {'ratio':>6} {'peak MiB':>9} {'trace KiB':>10} {'records':>8} {'B/rec':>6} {'rec/s':>8}")
    for r in rows:
        cold = f"  (cold cache {r['cold_s']:.2f} s)" if "cold_s" in r else ""
        if "fixed_s" in r:
            cold += f"  (fixed cost {r['fixed_s']:.2f} s)"
        if "drain_s" in r:
            cold += (f"  (checker {r['checker_rec_s']:.0f} rec/s against the program's {r['program_rec_s']:.0f}; "
                     f"drain {r['drain_s']:.2f} s = {r.get('steps_behind', 0):.1f} steps)")
        print(
            f"{r['workload']:<6} {r['setting']:<19} {r['wall_s']:>7.2f} {r['ratio']:>6.2f} {r['peak_mib']:>9.0f} "
            f"{r['trace_bytes'] / 1024:>10.1f} {r['records']:>8} {r['bytes_per_record']:>6.1f} {r['records_per_s']:>8.0f}{cold}"
        )
    print(f"(medians of {pairs} runs per setting, each after a plain run; python {sys.version.split()[0]})")
    print()
    for what, value, unit in micro:
        print(f"{what:<48} {value:>9.2f} {unit}")
    if invariants:
        print()
        _print_invariants(invariants)


if __name__ == "__main__":
    main()
