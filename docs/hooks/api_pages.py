"""MkDocs hook: generate the module lists of the API reference from the source tree.

Two markers are expanded in the Markdown of a page, before mkdocstrings renders it:

* ``<!-- submodules: PACKAGE -->`` — one mkdocstrings block per public submodule of PACKAGE
  (for packages whose content lives in submodules, e.g. ``liplayers.functional``);
* ``<!-- other-modules: PACKAGE -->`` — one block per public module or subpackage directly
  under PACKAGE that no other API page documents (with ``::: name`` or a ``submodules``
  marker), so a module added to the library appears in the reference without editing the docs.

Names starting with ``_`` are private and skipped. Nothing is imported: the files are listed.
"""
from __future__ import annotations

import os
import re

_SUBMODULES = re.compile(r"^<!-- submodules: ([A-Za-z_][\w.]*) -->$", re.M)
_OTHERS = re.compile(r"^<!-- other-modules: ([A-Za-z_][\w.]*) -->$", re.M)
_DOCUMENTED = re.compile(r"^(?:::: |<!-- submodules: )([A-Za-z_][\w.]*)", re.M)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_API = os.path.join(_ROOT, "docs", "api")


def submodules(package: str) -> list:
    """Dotted names of the public modules and subpackages directly under ``package``."""
    folder = os.path.join(_ROOT, *package.split("."))
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        raise ValueError(f"API page: {package} is not a package of this repository")
    names = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith("_"):
            continue
        if entry.endswith(".py"):
            names.append(entry[:-3])
        elif os.path.isfile(os.path.join(folder, entry, "__init__.py")):
            names.append(entry)
    return [f"{package}.{name}" for name in names]


def documented_elsewhere(this_page: str) -> set:
    """Modules named by the API pages other than ``this_page`` (a file name in docs/api)."""
    names = set()
    for entry in os.listdir(_API):
        if entry.endswith(".md") and entry != this_page:
            with open(os.path.join(_API, entry), encoding="utf-8") as f:
                names.update(_DOCUMENTED.findall(f.read()))
    return names


def _blocks(modules) -> str:
    return "\n".join(f"::: {module}\n    options:\n      show_root_full_path: true\n" for module in modules)


def expand(markdown: str, page_file: str) -> str:
    """``markdown`` with its markers replaced; ``page_file`` is the page's file name in docs/api."""
    markdown = _SUBMODULES.sub(lambda m: _blocks(submodules(m.group(1))), markdown)

    def others(match: "re.Match") -> str:
        known = documented_elsewhere(page_file)
        rest = [m for m in submodules(match.group(1)) if m not in known]
        return _blocks(rest) if rest else "*(every module has its own page)*"

    return _OTHERS.sub(others, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs hook signature
    return expand(markdown, os.path.basename(page.file.src_path))
