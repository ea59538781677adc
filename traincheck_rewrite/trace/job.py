"""open_job(): one or more run folders as one training job: its processes (with rank), their threads' trace files,
and the call sites, for the tools that read a trace stream by stream (diff, chrome/parquet export, query).

A `torchrun --nnodes=N` job writes one run folder per node. Folders are one job when they ran the same program
(identical `sites.json`), every process of each carries a `meta_vars.rank`, the world sizes agree and no rank
appears twice; anything else is refused with a one-line `JobError`.

Nothing here reads a trace whole: a process's identity (rank, worker id, start time) comes from the first record of
each of its files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .reader import ReadStats, read_file, source_key, trace_folder, trace_sources


class JobError(Exception):
    """A one-line reason the folders cannot be read as one job."""


@dataclass
class Source:
    """One trace (or spill-only) file: one thread's API or state records."""

    path: Path
    kind: str  # "API" or "VAR"
    pid: int
    tid: int
    first_time: int | None
    first_meta: dict

    def records(self, stats: ReadStats | None = None):
        return read_file(self.path, stats)


@dataclass
class Process:
    run: "RunFolder"
    pid: int
    sources: list[Source] = field(default_factory=list)
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    worker_id: int | None = None
    first_time: int | None = None

    @property
    def label(self) -> str:
        who = [f"rank {self.rank}"] if self.rank is not None else []
        if self.worker_id is not None:
            who.append(f"worker {self.worker_id}")
        return " ".join(who) + f" (pid {self.pid})" if who else f"pid {self.pid}"

    def threads(self) -> list[int]:
        """Thread ids, the one with the earliest record first (the main thread, in a training script)."""
        firsts: dict[int, int] = {}
        for s in self.sources:
            t = s.first_time if s.first_time is not None else 1 << 62
            firsts[s.tid] = min(firsts.get(s.tid, t), t)
        return sorted(firsts, key=lambda tid: (firsts[tid], tid))

    def sources_of(self, kind: str, tid: int | None = None) -> list[Source]:
        return [s for s in self.sources if s.kind == kind and (tid is None or s.tid == tid)]


class RunFolder:
    """A run folder (or a bare traces folder): its trace sources and, when present, sites.json and the originals."""

    def __init__(self, path: Path):
        self.path = path
        self.root = path.parent if path.name == "traces" and not (path / "traces").is_dir() else path
        self._sites: dict | None = None
        self._lines: dict[str, list[str] | None] = {}

    @property
    def sites(self) -> dict:
        if self._sites is None:
            f = self.root / "sites.json"
            try:
                self._sites = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
            except (OSError, ValueError):
                raise JobError(f"{f}: not valid JSON") from None
        return self._sites

    def run_info(self) -> dict:
        f = self.root / "run.json"
        try:
            info = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def site(self, site) -> dict:
        """{"where": "file:line", "source": original line text or None} of a record's `site` field."""
        if isinstance(site, str):  # a rewritten library: "<module path>:<line>:<column>"
            path, _, rest = site.partition(":")
            return {"where": f"{path}:{rest.split(':')[0]}" if rest else site, "source": None}
        entry = self.sites.get(str(site)) if site is not None else None
        if not isinstance(entry, dict):
            return {"where": None if site is None else f"site {site}", "source": None}
        file, line = entry.get("file"), entry.get("line")
        text = self.line(file, line)
        return {"where": f"{file}:{line}", "source": text if text is not None else entry.get("source")}

    def line(self, file, line) -> str | None:
        if not isinstance(file, str) or not isinstance(line, int):
            return None
        if file not in self._lines:
            original = self.root / "original_sources" / file
            try:
                self._lines[file] = original.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                self._lines[file] = None
        lines = self._lines[file]
        return lines[line - 1].strip() if lines and 0 < line <= len(lines) else None


def _int(value) -> int | None:
    return value if type(value) is int else None


def _first(source_path: Path) -> tuple[int | None, dict]:
    for record in read_file(source_path, ReadStats()):
        meta = record.get("meta_vars")
        return _int(record.get("time")), meta if isinstance(meta, dict) else {}
    return None, {}


@dataclass
class Job:
    runs: list[RunFolder]
    processes: list[Process]  # ranked processes by rank, then the others by first record

    def select(self, ranks: list[int] | None) -> list[Process]:
        if ranks is None:
            return list(self.processes)
        have = {p.rank for p in self.processes}
        missing = [r for r in ranks if r not in have]
        if missing:
            known = sorted(r for r in have if r is not None)
            raise JobError(f"no rank {missing[0]} in the trace (ranks: {', '.join(map(str, known)) or 'none'})")
        return [p for p in self.processes if p.rank in ranks]


def check_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise JobError(f"{path}: no such run folder")
    if not (folder / "traces").is_dir() and not any(folder.glob("trace_*")):
        raise JobError(f"{path}: not a run folder (no traces/ inside)")
    return folder


def open_job(paths: list[str | Path]) -> Job:
    runs = [RunFolder(check_folder(p)) for p in paths]
    processes: list[Process] = []
    for run in runs:
        by_pid: dict[int, Process] = {}
        for path in trace_sources(trace_folder(run.path)):
            key = source_key(path)
            if key is None:
                continue
            kind, pid, tid = key
            first_time, meta = _first(path)
            proc = by_pid.setdefault(pid, Process(run, pid))
            proc.sources.append(Source(path, kind, pid, tid, first_time, meta))
            for attr in ("rank", "local_rank", "world_size", "worker_id"):
                if getattr(proc, attr) is None:
                    setattr(proc, attr, _int(meta.get(attr)))
            if first_time is not None and (proc.first_time is None or first_time < proc.first_time):
                proc.first_time = first_time
        processes += by_pid.values()
    if len(runs) > 1:
        _check_one_job(runs, processes)
    processes.sort(key=lambda p: (p.rank is None, p.rank or 0, p.worker_id is not None, p.worker_id or 0,
                                  p.first_time or 0, p.pid))
    return Job(runs, processes)


def _check_one_job(runs: list[RunFolder], processes: list[Process]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.sites != first.sites:
            raise JobError(f"{run.path} and {first.path} ran different programs (sites.json differ): not one job")
    ranked = [p for p in processes if p.worker_id is None]  # DataLoader workers share their trainer's rank
    for p in ranked:
        if p.rank is None:
            raise JobError(f"{p.run.path}: process {p.pid} has no rank, so the folders cannot be joined into one job")
    sizes = sorted({p.world_size for p in ranked if p.world_size is not None})
    if len(sizes) > 1:
        raise JobError(f"world sizes {sizes} differ across the folders: not one job")
    seen: dict[int, Process] = {}
    for p in ranked:
        other = seen.get(p.rank)
        if other is not None and other.run is not p.run:
            raise JobError(f"rank {p.rank} appears in both {other.run.path} and {p.run.path}: not one job")
        seen[p.rank] = p
