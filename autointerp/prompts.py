"""Prompt templates: files in prompts/ (shipped with the package, see autointerp.resources) named `<name>.v<version>.txt`, rendered with `$field` placeholders.

A template holds `=== system ===` and `=== user ===` sections (chat messages) or plain text (completion
prompts). Every label and score records the template's name and the sha256 of its file, so a changed
prompt is a new version, never a silent edit.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from autointerp.errors import AutointerpError
from autointerp.resources import PROMPTS_DIR


_SECTION = re.compile(r"^=== (system|user|assistant) ===[ \t]*$", re.MULTILINE)
_VERSIONED = re.compile(r"^(?P<base>.+)\.v(?P<version>\d+)$")


@dataclass(frozen=True)
class PromptTemplate:
    name: str  # e.g. "explain_highlight.v1"
    path: Path
    text: str
    sha256: str

    def fields(self) -> set[str]:
        return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(self.text)} - {None}

    def render_text(self, **fields: object) -> str:
        """The whole template (for completion endpoints), every placeholder filled."""
        return _substitute(self, self.text, fields)

    def render_messages(self, **fields: object) -> list[dict[str, str]]:
        """Chat messages, one per section, every placeholder filled."""
        parts = _SECTION.split(self.text)
        if len(parts) < 3:
            return [{"role": "user", "content": self.render_text(**fields).strip()}]
        roles, bodies = parts[1::2], parts[2::2]
        return [{"role": role, "content": _substitute(self, body, fields).strip()} for role, body in zip(roles, bodies)]


def _substitute(template: PromptTemplate, text: str, fields: dict[str, object]) -> str:
    missing = template.fields() - set(fields)
    if missing:
        raise ValueError(f"prompt {template.name} needs fields {sorted(missing)}")
    return string.Template(text).substitute({k: str(v) for k, v in fields.items()})


def available_prompts(directory: Path = PROMPTS_DIR) -> list[str]:
    return sorted(p.name[: -len(".txt")] for p in directory.glob("*.v*.txt"))


@cache
def load_prompt(name: str, directory: Path = PROMPTS_DIR) -> PromptTemplate:
    """`name` is exact ("explain_pairs.v1") or unversioned ("explain_pairs": the highest version)."""
    if _VERSIONED.match(name):
        path = directory / f"{name}.txt"
    else:
        versions = [
            (int(m.group("version")), p)
            for p in directory.glob(f"{name}.v*.txt")
            if (m := _VERSIONED.match(p.name[: -len(".txt")])) and m.group("base") == name
        ]
        path = max(versions)[1] if versions else directory / f"{name}.v1.txt"
    if not path.exists():
        raise AutointerpError(
            f"prompt template {name!r} not found in {directory}; available: {', '.join(available_prompts(directory))}"
        )
    data = path.read_bytes()
    return PromptTemplate(
        name=path.name[: -len(".txt")], path=path, text=data.decode("utf-8"), sha256=hashlib.sha256(data).hexdigest()
    )
