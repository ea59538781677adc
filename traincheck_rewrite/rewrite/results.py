"""What a rewrite produces besides the source: call sites and bindings found. Free of libcst, so a run whose files
all come from the rewrite cache never imports it."""

from __future__ import annotations

from dataclasses import dataclass, field


class RewriteError(Exception):
    """A file that cannot be rewritten; the message is one line naming the file and line."""


@dataclass
class SiteTable:
    """Call sites of one run, numbered from 1 across all rewritten files (written as `sites.json`)."""

    sites: dict[int, dict] = field(default_factory=dict)

    def extend(self, file: str, spans: list) -> None:
        self.add(
            {"file": file, "line": s.line, "col": s.col, "end_line": s.end_line, "end_col": s.end_col, "source": s.text}
            for s in spans
        )

    def add(self, entries) -> None:
        for entry in entries:
            self.sites[len(self.sites) + 1] = entry

    def since(self, count: int) -> list[dict]:
        """The entries added after the first `count`."""
        return [self.sites[k] for k in range(count + 1, len(self.sites) + 1)]

    def to_json(self) -> dict[str, dict]:
        return {str(k): v for k, v in self.sites.items()}


@dataclass
class Bindings:
    """What the model transform found, across files: {tracked name: [(file, line)]} and model-like assignments."""

    found: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    candidates: list[tuple[str, str, int]] = field(default_factory=list)  # (target, file, line)

    def merge(self, other: Bindings) -> None:
        for name, places in other.found.items():
            self.found.setdefault(name, []).extend(places)
        self.candidates.extend(other.candidates)
