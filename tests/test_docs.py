"""The documentation site: `mkdocs build --strict` passes, tested examples run, the API reference is complete."""
import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _docs_text(folder):
    text = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".md"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                text[name] = f.read()
    return text


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # cwd: the snippets extension resolves benchmarks/README.md and CHANGELOG.md from the repository root
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", os.path.join(ROOT, "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    site = tmp_path / "site"
    for page in ("index.html", "getting-started/index.html", "certification/index.html",
                 "benchmarks/index.html", "api/nn/index.html", "api/certify/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "onnx" / "index.html").read_text(encoding="utf-8")
    assert 'id="liplayers.onnx.export_onnx"' in api  # the reference is generated from the docstrings
    for page in (site / "api").glob("*/index.html"):  # Sphinx roles were rendered as links or code
        text = page.read_text(encoding="utf-8")
        assert ":func:`" not in text and ":class:`" not in text and "<autoref" not in text, page
    assert "<table>" in (site / "benchmarks" / "index.html").read_text(encoding="utf-8")  # the included tables


def test_every_module_is_in_the_api_reference():
    """Each public module has its own API page or is listed on the generated "Other modules" page."""
    sys.path.insert(0, os.path.join(DOCS, "hooks"))
    try:
        import api_pages
    finally:
        sys.path.pop(0)
    generated = api_pages.expand("<!-- other-modules: liplayers -->", "other.md")
    documented = api_pages.documented_elsewhere("other.md") | set(re.findall(r"^::: (\S+)", generated, re.M))
    for module in api_pages.submodules("liplayers"):
        assert module in documented, module
    assert "liplayers.cli" in generated and "liplayers.nn" not in generated
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        nav = f.read()
    for name in os.listdir(os.path.join(DOCS, "api")):
        if name.endswith(".md"):
            assert f"api/{name}" in nav, f"docs/api/{name} is not in the nav of mkdocs.yml"


def _tested_blocks():
    blocks = []
    for name, text in _docs_text(DOCS).items():
        for i, code in enumerate(re.findall(r"<!-- test -->\s*```python\n(.*?)```", text, re.S)):
            blocks.append(pytest.param(code, id=f"{name}:{i}"))
    return blocks


@pytest.mark.parametrize("code", _tested_blocks())
def test_documented_example_runs(code):
    """Code blocks marked ``<!-- test -->`` in the docs run as shown."""
    pytest.importorskip("sklearn")  # the walkthrough trains on scikit-learn's digits
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})
    printed = buf.getvalue()
    if "certified_accuracy" in code:
        assert "certified accuracy" in printed
        clean = float(re.search(r"clean accuracy ([0-9.]+)", printed).group(1))
        assert clean > 0.9, printed  # the walkthrough's promise: a working certified classifier


def test_rst_markup_extension():
    """The griffe extension of the docs: Sphinx roles, simple tables and literal markers as Markdown."""
    pytest.importorskip("griffe")
    sys.path.insert(0, os.path.join(DOCS, "hooks"))
    try:
        from rst_markup import convert
    finally:
        sys.path.pop(0)
    assert convert(":func:`~liplayers.certify.certify`") == \
        '<autoref identifier="liplayers.certify.certify" optional>`certify`</autoref>'
    assert convert(":class:`Certifier`", "liplayers.certify") == \
        '<autoref identifier="liplayers.certify.Certifier" optional>`Certifier`</autoref>'
    table = "\n".join([
        "=====  ==========",
        "name   meaning",
        "=====  ==========",
        "a      first",
        "       continued",
        "b      second",
        "=====  ==========",
    ])
    assert convert(table).strip().splitlines() == [
        "| name | meaning |", "| --- | --- |", "| a | first continued |", "| b | second |"]
    assert convert("the map::\n\n    x = 1") == "the map:\n\n    x = 1"
