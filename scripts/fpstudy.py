"""False alarms on healthy programs: invariants inferred from some healthy programs, checked on other healthy ones.

    .venv/bin/python scripts/fpstudy.py [--traincheck VENV [--no-ours]] [--out FILE] [--keep DIR]

The shape of TrainCheck's own false-positive study (TrainCheck-Benchmarks `false-positive/CNN`: invariants inferred
from MNIST programs, checked on healthy FashionMNIST, CIFAR, ResNet18 and VGG11 variants), on the tiny CPU programs
of fixtures/fpstudy (one script, FP_PROGRAM picks the program). For each collector (`tc-rewrite` at default settings;
with `--traincheck VENV` also TrainCheck's `traincheck-collect` from that virtualenv), every program is collected
once, `traincheck-infer` is run on the traces of INFER_FROM together, and `traincheck-check` on each of CHECK_ON.
Every violation is a false alarm: the programs are healthy.

The false-positive rate of a program is the invariants it violates over the invariants checked on it (all those
inferred); the table also gives the invariants the program triggers (whose precondition it meets: passed or
violated) and the rate over those. Prints a Markdown table per collector and the largest groups of false alarms by
relation and API (the invariant's first API, or variable type), over all checked programs. Reuses
scripts/bugbench.py's collectors and engine calls.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bugbench  # noqa: E402

FIXTURE = bugbench.ROOT / "fixtures" / "fpstudy"
INFER_FROM = ["mnist", "mnist_cifar"]
CHECK_ON = {  # program: how it differs from those invariants are inferred from
    "fashion": "other data, same network",
    "highres": "3x20x20 images",
    "longer": "4 epochs instead of 2-3",
    "resnet": "ResNet, SGD + cosine annealing, cross-entropy",
    "vgg": "VGG from a layer list, SGD + cosine annealing",
}
FUNCTION = re.compile(r'"function": ?"([^"]+)"')


@dataclass
class Checked:
    """What `traincheck-check` said of one healthy program."""

    program: str
    invariants: int
    failed: list[dict]  # the violated invariants: relation, api, text, absent (an API it names the program never calls)
    triggered: int  # invariants whose precondition the program meets (passed or violated)
    seconds: float  # collection of the program

    @property
    def rate(self) -> float:
        return len(self.failed) / self.invariants if self.invariants else 0.0

    @property
    def about_absent(self) -> int:
        return sum(1 for v in self.failed if v["absent"])


@dataclass
class Study:
    collector: str
    invariants: int = 0
    records: int = 0  # of the traces inferred from
    seconds: dict[str, float] = field(default_factory=dict)  # infer, and the collection of each program
    checked: list[Checked] = field(default_factory=list)
    error: str | None = None


class TorchNames:
    """tc-rewrite's traces of the same runs with torch's C functions named `torch.<name>` (`torch.flatten`), as the
    export named them before it took TrainCheck's `torch._VariableFunctionsClass.<name>` (b5c7083): that naming's
    effect on false alarms."""

    name = "tc-rewrite, torch.<name>"

    def __init__(self, made: Path, seconds: dict[str, float]):
        self.made, self.seconds = made, seconds  # tc-rewrite's study folder and collection times

    def collect(self, entry: bugbench.Entry, work: Path, label: str, env: dict[str, str], invariants: Path | None) -> tuple[Path, float]:
        renamed = work / f"{label}_traces"
        renamed.mkdir(parents=True, exist_ok=True)
        for path in (self.made / f"{label}_traces").iterdir():
            (renamed / path.name).write_text(path.read_text().replace('"torch._VariableFunctionsClass.', '"torch.'))
        return renamed, self.seconds[label]


def program_entry(name: str) -> bugbench.Entry:
    """One program as bugbench's collectors take it (the fixture's folder, the models its config tracks)."""
    config = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    return bugbench.Entry(name, FIXTURE, 0, config.get("shscript"), list(config.get("models_to_track", [])))


def count_results(log: Path) -> int:
    return len(bugbench._failed_results(log)) if log.exists() else 0


def study(collector, engine: Path, work: Path) -> Study:
    """Collect every program, infer from INFER_FROM together, check each of CHECK_ON."""
    result = Study(collector.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        traces = {}
        for name in [*INFER_FROM, *CHECK_ON]:
            env = bugbench._env(FP_PROGRAM=name)
            traces[name], result.seconds[name] = collector.collect(program_entry(name), work, name, env, None)
        invariants = work / "invariants.json"
        result.records = sum(bugbench.trace_records(traces[name]) for name in INFER_FROM)
        result.invariants, result.seconds["infer"] = bugbench.infer(engine, [traces[n] for n in INFER_FROM], invariants)
        for name in CHECK_ON:
            out = work / f"{name}_check"
            bugbench.check(engine, traces[name], invariants, out)
            report = next(out.glob("*/failed.log")).parent
            called = functions_called(traces[name])
            failed = [violated(r["invariant"], called) for r in bugbench._failed_results(report / "failed.log")]
            triggered = len(failed) + count_results(report / "passed.log")
            result.checked.append(Checked(name, result.invariants, failed, triggered, result.seconds[name]))
    except (RuntimeError, StopIteration, subprocess.TimeoutExpired) as exc:
        result.error = str(exc) or "traincheck-check wrote no failed.log"
    return result


def functions_called(traces: Path) -> set[str]:
    """The functions a trace folder has records of."""
    found: set[str] = set()
    for path in traces.iterdir():
        if path.name.startswith("trace_"):
            found.update(FUNCTION.findall(path.read_text(errors="replace")))
    return found


def violated(invariant: dict, called: set[str]) -> dict:
    """A violated invariant in brief: its relation, the API (or variable type and attribute) it is first about, as
    the engine names it, the first API it names that the checked program never calls (None if none), and its text."""
    params = invariant.get("params") or [{}]
    apis = [p.get("api_full_name") or p.get("api_name") for p in params]
    first = apis[0] or ".".join(str(params[0][k]) for k in ("var_type", "attr_name") if params[0].get(k))
    absent = next((api for api in apis if api and api not in called), None)
    return {"relation": invariant["relation"], "api": first or "?", "absent": absent,
            "text": invariant.get("text_description", "")}


def groups(result: Study) -> dict[tuple[str, str], list[str]]:
    """False alarms over all checked programs, by relation and API (the API the program never calls where the
    invariant names one, its first API otherwise): the violated invariants' texts."""
    found: dict[tuple[str, str], list[str]] = {}
    for c in result.checked:
        for v in c.failed:
            api = f"`{v['absent']}` (never called)" if v["absent"] else f"`{v['api']}`"
            found.setdefault((v["relation"], api), []).append(v["text"])
    return found


def table(result: Study) -> str:
    if result.error:
        return f"**{result.collector}**: error: {result.error}"
    lines = [(
        f"**{result.collector}**: {result.invariants} invariants inferred from {' + '.join(INFER_FROM)} "
        f"({result.records:,} trace records) in {result.seconds.get('infer', 0):.0f} s\n\n"
        "| program | differs by | collection | invariants triggered | violated (false alarms) | about an API it never calls | "
        "false-positive rate | of those triggered |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )]
    for c in result.checked:
        of_triggered = len(c.failed) / c.triggered if c.triggered else 0.0
        lines.append(
            f"| {c.program} | {CHECK_ON[c.program]} | {c.seconds:.0f} s | {c.triggered} | {len(c.failed)} | {c.about_absent} | "
            f"{c.rate:.1%} | {of_triggered:.1%} |"
        )
    alarms = sum(len(c.failed) for c in result.checked)
    checked, triggered = sum(c.invariants for c in result.checked), sum(c.triggered for c in result.checked)
    lines.append(
        f"| all {len(result.checked)} | | | {triggered} | {alarms} | {sum(c.about_absent for c in result.checked)} | "
        f"{alarms / checked:.1%} | "
        f"{alarms / triggered if triggered else 0:.1%} |"
    )
    return "\n".join(lines)


def group_table(result: Study, limit: int = 8) -> str:
    found = groups(result)
    if not found:
        return f"**{result.collector}**: no false alarm"
    total = sum(map(len, found.values()))
    lines = [
        f"**{result.collector}**: largest groups of false alarms ({total} over all checked programs)\n",
        "| relation | API | false alarms | share | most frequent |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for (relation, api), texts in sorted(found.items(), key=lambda item: -len(item[1]))[:limit]:
        example = Counter(texts).most_common(1)[0][0].replace("|", "/")
        lines.append(f"| {relation.replace('Relation', '')} | {api} | {len(texts)} | {len(texts) / total:.0%} | {example} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traincheck", type=Path, metavar="VENV", help="also run TrainCheck's collector from VENV")
    parser.add_argument("--no-ours", action="store_true", help="with --traincheck: TrainCheck's collector alone")
    parser.add_argument("--out", type=Path, help="also write the tables (and the details as JSON beside it)")
    parser.add_argument("--keep", type=Path, help="keep every run, trace and report under this folder")
    args = parser.parse_args()
    engine = bugbench.engine_bin()
    collectors = ([] if args.no_ours and args.traincheck else [bugbench.Ours()])
    collectors += [bugbench.Theirs(args.traincheck.resolve())] if args.traincheck else []
    work_root = Path(tempfile.mkdtemp(prefix="fpstudy_")) if args.keep is None else args.keep.resolve()
    parts, details = [], []
    try:
        for collector in collectors:
            results = [study(collector, engine, work_root / collector.name)]
            if isinstance(collector, bugbench.Ours) and not results[0].error:
                names = TorchNames(work_root / collector.name, results[0].seconds)
                results.append(study(names, engine, work_root / "torch-names"))
            for result in results:
                parts += [table(result), group_table(result)]
                print(parts[-2] + "\n\n" + parts[-1] + "\n", flush=True)
                details.append(result.__dict__ | {"checked": [c.__dict__ for c in result.checked]})
            if args.out:  # after every collector, so that an interrupted run keeps what it measured
                args.out.write_text("\n\n".join(parts) + "\n")
                args.out.with_suffix(".json").write_text(json.dumps(details, indent=1, default=str) + "\n")
    finally:
        if args.keep is None:
            shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()
