"""Point a launcher shell script at the instrumented pyscript, word by word.

The script is split into shell words the way the shell would (quotes, escapes, comments, operators); a word is
replaced only when, unquoted, it names the pyscript as a whole. Nothing is substring-replaced, so `train.py.bak`
or `old_train.py` stay as they are.
"""

from __future__ import annotations

import shlex
from pathlib import Path

_OPERATORS = set(";&|<>()\n")


def _words(text: str):
    """Yield (start, end, unquoted value) for each shell word of `text`."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t" or c in _OPERATORS:
            i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start, value = i, []
        while i < n and text[i] not in " \t" and text[i] not in _OPERATORS:
            c = text[i]
            if c == "\\" and i + 1 < n:
                if text[i + 1] != "\n":
                    value.append(text[i + 1])
                i += 2
            elif c == "'":
                end = text.find("'", i + 1)
                end = n if end < 0 else end
                value.append(text[i + 1 : end])
                i = end + 1
            elif c == '"':
                j = i + 1
                while j < n and text[j] != '"':
                    if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\$`':
                        value.append(text[j + 1])
                        j += 2
                    else:
                        value.append(text[j])
                        j += 1
                i = j + 1
            else:
                value.append(c)
                i += 1
        yield start, min(i, n), "".join(value)


def _names_script(word: str, script: Path, dirs: tuple[Path, ...]) -> bool:
    if not word.endswith(".py") or "$" in word:
        return False
    candidate = Path(word).expanduser()
    target = script.resolve()
    if candidate.is_absolute():
        return candidate.resolve() == target
    return any((d / candidate).resolve() == target for d in dirs)


def replace_script_words(text: str, script: Path, replacement: Path, dirs: tuple[Path, ...]) -> tuple[str, int]:
    """`text` with every word naming `script` (relative to any of `dirs`) replaced by `replacement`, and the count."""
    out, last, count = [], 0, 0
    for start, end, value in _words(text):
        if _names_script(value, script, dirs):
            out.append(text[last:start])
            out.append(shlex.quote(str(replacement)))
            last = end
            count += 1
    out.append(text[last:])
    return "".join(out), count
