"""Griffe extension: render the reStructuredText markup of the library's docstrings as Markdown.

The docstrings are Google style, but they cross-reference with Sphinx roles
(``:func:`~liplayers.certify.certify```) and hold a few RST constructs that Markdown does not
know. Before mkdocstrings renders a docstring, this extension rewrites:

* roles ``:func:`` / ``:class:`` / ``:meth:`` / ``:mod:`` / ``:data:`` / ``:attr:`` / ``:exc:``
  into optional cross-references: a link when the target is in the reference, plain code
  otherwise (never a build warning); ``~`` keeps only the last component as the title, and a
  name without dots is looked up next to the documented object;
* simple tables (columns under runs of ``=``) into Markdown tables;
* a paragraph ending with ``::`` (an RST literal-block marker) into one ending with ``:``.

The source files are not changed; only what the documentation shows.
"""
from __future__ import annotations

import re
from typing import Any, List

from griffe import Extension

_ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|data|attr|exc|obj|const):`([^`]+)`")
_RULE = re.compile(r"^(\s*)(=+)((?: +=+)+)\s*$")
_LITERAL = re.compile(r"(\S)::$", re.M)


def _role(match: "re.Match", scope: str) -> str:
    target = match.group(2).strip()
    if "<" in target and target.endswith(">"):  # :func:`title <target>`
        title, target = target[:-1].split("<", 1)
        title = title.strip()
    else:
        title = None
    short = target.startswith("~")
    target = target.lstrip("~.")
    if title is None:
        title = target.rsplit(".", 1)[-1] if short else target
    if target.endswith("()"):
        target = target[:-2]
    identifier = target if ("." in target or not scope) else f"{scope}.{target}"
    return f'<autoref identifier="{identifier}" optional>`{title}`</autoref>'


def _columns(rule: str) -> List[tuple]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]


def _cells(line: str, cols: List[tuple]) -> List[str]:
    cells = []
    for i, (start, _) in enumerate(cols):
        end = cols[i + 1][0] if i + 1 < len(cols) else len(line)
        cells.append(line[start:end].strip())
    return cells


def _tables(text: str) -> str:
    lines = text.split("\n")
    out: List[str] = []
    i = 0
    while i < len(lines):
        match = _RULE.match(lines[i])
        # a simple table: rule, header line(s), rule, rows, rule
        if match and i + 2 < len(lines):
            try:
                second = next(j for j in range(i + 1, len(lines)) if _RULE.match(lines[j]))
                third = next(j for j in range(second + 1, len(lines)) if _RULE.match(lines[j]))
            except StopIteration:
                out.append(lines[i])
                i += 1
                continue
            indent = match.group(1)
            cols = _columns(lines[i])
            header = [" ".join(c) for c in zip(*(_cells(l, cols) for l in lines[i + 1:second]))]
            rows: List[List[str]] = []
            for line in lines[second + 1:third]:
                if not line.strip():
                    continue
                cells = _cells(line, cols)
                if rows and not cells[0]:  # continuation of the previous row
                    rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
                else:
                    rows.append(cells)
            out.append("")
            out.append(indent + "| " + " | ".join(header) + " |")
            out.append(indent + "|" + " --- |" * len(cols))
            out.extend(indent + "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)
            out.append("")
            i = third + 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def convert(text: str, scope: str = "") -> str:
    """The Markdown rendering of an RST-flavoured docstring; ``scope`` resolves names without dots."""
    text = _tables(text)
    text = _LITERAL.sub(r"\1:", text)
    return _ROLE.sub(lambda m: _role(m, scope), text)


class RstMarkup(Extension):
    """Rewrite each docstring once, when griffe has loaded its object."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:  # griffe hook
        doc = getattr(obj, "docstring", None)
        if doc is None or not doc.value:
            return
        scope = obj.path if getattr(obj, "is_class", False) or getattr(obj, "is_module", False) else \
            obj.path.rsplit(".", 1)[0]
        doc.value = convert(doc.value, scope)
