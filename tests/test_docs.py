"""The documentation runs: every ```python block of README.md and docs/**/*.md (and .rst) executes, and the
API reference covers every public name.

Each page's blocks run in order in one namespace (like a reader typing them in), with the default float32
dtype a fresh interpreter has (conftest.py switches the suite to float64; the docs must not depend on it).
A block that cannot run in one process carries a marker on the line just before its fence:

    <!-- docs-test: mpiexec -n 2 -->   run the block alone as a script under ``mpiexec -n 2``
    <!-- docs-test: skip REASON -->    not run (REASON says why); allowed for at most MAX_SKIPPED blocks

Shell blocks (```bash, ```console, ...) are not executed.  The examples in the public docstrings run as
doctests.
"""

from __future__ import annotations

import doctest
import inspect
import os
import re
import sys
from dataclasses import dataclass

import pytest
import torch
from mpi_run import check, mpiexec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
MAX_SKIPPED = 2          # skipping must stay the exception: a skipped block can drift from the code
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<what>.*?)\s*-->\s*$")
RST_BLOCK = re.compile(r"^(?P<indent>\s*)\.\. (?:code-block|code|sourcecode)::\s*(?:python|py)\s*$")
PYTHON_INFOS = {"python", "py", "python3", "{code-block}", "{code}"}


@dataclass
class Block:
    path: str
    line: int          # 1-based line of the first code line
    code: str
    marker: str | None  # None, "skip ...", or "mpiexec -n N"

    @property
    def where(self) -> str:
        return f"{os.path.relpath(self.path, REPO)}:{self.line}"


def _markdown_blocks(path: str, text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match["fence"], match["info"].lower()
        rest = lines[i][match.end("info"):].strip().lower()
        is_python = info in ("python", "py", "python3") or (info in ("{code-block}", "{code}")
                                                              and rest.split()[:1] in (["python"], ["py"]))
        marker = None
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (m := MARKER.match(lines[j])):
            marker = m["what"]
        start, i = i + 1, i + 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and set(lines[i].strip()) == {fence[0]}):
            i += 1
        body = [ln for ln in lines[start:i] if not (is_python and info.startswith("{") and ln.startswith(":"))]
        indent = len(match["indent"])
        if is_python:
            blocks.append(Block(path, start + 1, "\n".join(ln[indent:] for ln in body) + "\n", marker))
        i += 1
    return blocks


def _rst_blocks(path: str, text: str) -> list[Block]:
    blocks, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        match = RST_BLOCK.match(line)
        if not match:
            continue
        marker = None
        if i >= 2 and (m := re.match(r"^\s*\.\. docs-test:\s*(.*)$", lines[i - 2] if not lines[i - 1].strip()
                                     else lines[i - 1])):
            marker = m[1].strip()
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].lstrip().startswith(":")):
            j += 1
        body_start, body = j, []
        base = len(match["indent"])
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base):
            body.append(lines[j])
            j += 1
        width = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        blocks.append(Block(path, body_start + 1, "\n".join(b[width:] for b in body).rstrip() + "\n", marker))
    return blocks


def documented_pages() -> list[str]:
    pages = [os.path.join(REPO, "README.md")]
    for folder, dirs, files in os.walk(DOCS):
        dirs[:] = sorted(d for d in dirs if d != "_build")
        pages += [os.path.join(folder, f) for f in sorted(files) if f.endswith((".md", ".rst"))]
    return pages


def blocks_of(path: str) -> list[Block]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return _rst_blocks(path, text) if path.endswith(".rst") else _markdown_blocks(path, text)


PAGES = documented_pages()
ALL_BLOCKS = [b for p in PAGES for b in blocks_of(p)]


def _page_id(path: str) -> str:
    return os.path.relpath(path, REPO)


# ---------------------------------------------------------------------------- the extractor itself
def test_extractor_finds_fences_markers_and_indented_blocks():
    text = "\n".join([
        "intro", "```python", "a = 1", "```", "", "<!-- docs-test: skip needs a GPU -->", "```python",
        "b = 2", "```", "```bash", "echo no", "```", "1. item", "   ```python", "   c = 3", "   ```",
        "````python", "d = '```'", "````", "```{code-block} python", ":caption: x", "e = 5", "```"])
    blocks = _markdown_blocks("page.md", text)
    assert [b.code for b in blocks] == ["a = 1\n", "b = 2\n", "c = 3\n", "d = '```'\n", "e = 5\n"]
    assert [b.marker for b in blocks] == [None, "skip needs a GPU", None, None, None]
    assert blocks[0].line == 3
    rst = "Title\n\n.. docs-test: skip why\n\n.. code-block:: python\n   :caption: c\n\n   x = 1\n   y = 2\n\nafter\n"
    (block,) = _rst_blocks("page.rst", rst)
    assert block.code == "x = 1\ny = 2\n" and block.marker == "skip why"


def test_every_page_with_code_is_found():
    names = {_page_id(b.path) for b in ALL_BLOCKS}
    assert "README.md" in names
    assert any(n.startswith(os.path.join("docs", "guides")) for n in names), names


def test_markers_are_known_and_used_sparingly():
    skipped = [b for b in ALL_BLOCKS if b.marker and b.marker.startswith("skip")]
    for b in ALL_BLOCKS:
        assert b.marker is None or re.fullmatch(r"skip \S.*|mpiexec -n [2-4]", b.marker), \
            f"{b.where}: unknown docs-test marker {b.marker!r}"
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped doc blocks: {[b.where for b in skipped]}"


# ---------------------------------------------------------------------------- running the blocks
@pytest.mark.parametrize("page", [p for p in PAGES if any(b.marker is None for b in blocks_of(p))], ids=_page_id)
def test_page_code_runs(page, monkeypatch):
    """The page's in-process blocks, in order, in one namespace (as a reader would run them)."""
    monkeypatch.setattr(sys, "argv", [page])       # what a reader's script sees: no pytest arguments
    previous_dtype, previous_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)         # a fresh interpreter's default
    torch.manual_seed(0)
    namespace = {"__name__": "__main__"}
    try:
        for block in blocks_of(page):
            if block.marker is not None:
                continue
            code = compile("\n" * (block.line - 1) + block.code, block.path, "exec")
            try:
                exec(code, namespace)  # noqa: S102 - running the documentation is the point
            except Exception as error:
                raise AssertionError(f"the code block at {block.where} failed: {type(error).__name__}: "
                                     f"{error}") from error
    finally:
        torch.set_default_dtype(previous_dtype)
        torch.set_num_threads(previous_threads)


MPI_BLOCKS = [b for b in ALL_BLOCKS if b.marker and b.marker.startswith("mpiexec")]


@pytest.mark.parametrize("block", MPI_BLOCKS, ids=[b.where for b in MPI_BLOCKS])
def test_mpi_block_runs(block, tmp_path):
    """A block marked ``mpiexec -n N`` is a whole program: run it on N ranks."""
    n = int(block.marker.split()[-1])
    script = tmp_path / "block.py"
    script.write_text("\n" * (block.line - 1) + block.code)
    check(mpiexec(n, [str(script)], timeout=120, cwd=tmp_path))


# ---------------------------------------------------------------------------- the API reference
API_PAGES = os.path.join(DOCS, "api")
# autodoc directives sit in {eval-rst} blocks: their generated reST must not be parsed as Markdown
DIRECTIVE = re.compile(r"^\s*\.\. (?:auto(?:function|class|exception|data|method|attribute|module)"
                       r"|py:data|py:class)::\s+(\S+)", re.M)


def _documented_objects() -> dict[str, object]:
    names = []
    for name in sorted(os.listdir(API_PAGES)):
        with open(os.path.join(API_PAGES, name), encoding="utf-8") as handle:
            names += DIRECTIVE.findall(handle.read())
    objects = {}
    for dotted in names:
        module, _, attribute = dotted.rpartition(".")
        objects[dotted] = getattr(__import__(module, fromlist=[attribute]), attribute) if module else \
            __import__(dotted)
    return objects


def _public_modules():
    """``pnode`` and every public submodule (no leading underscore) that declares ``__all__``: those
    names are the API (pnode.distributed, pnode.training, and pnode.nn etc. once they exist)."""
    import importlib
    import pkgutil

    import pnode

    modules = [pnode]
    for info in pkgutil.iter_modules(pnode.__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"pnode.{info.name}")
            if hasattr(module, "__all__"):
                modules.append(module)
    return modules


def test_api_reference_covers_every_public_name():
    """Every name in the public modules' ``__all__`` is documented on an API page (re-exports count when
    the same object is documented under another name)."""
    documented = _documented_objects()
    ids = {id(obj) for obj in documented.values()}
    missing = []
    for module in _public_modules():
        for name in module.__all__:
            obj = getattr(module, name)
            if f"{module.__name__}.{name}" not in documented and (
                    isinstance(obj, (int, float, str)) or id(obj) not in ids):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"public names without an API entry in docs/api/: {missing}"


def test_api_pages_use_public_paths_only():
    """Autodoc directives name public modules, never internal ones (pnode.solver, pnode._x, ...)."""
    import pkgutil

    import pnode

    public = {"pnode"} | {f"pnode.{m.name}" for m in pkgutil.iter_modules(pnode.__path__) if not m.name.startswith("_")}
    for dotted in _documented_objects():
        module = dotted.rpartition(".")[0]
        assert module in public or dotted in public, f"docs/api names an internal module: {dotted}"


def _public_objects():
    for module in _public_modules():
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj


def test_docstring_examples_run():
    """The Examples sections of public docstrings are doctests (run in the defining module's namespace,
    with ``pnode`` and ``torch`` imported); they must pass."""
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                                                    | doctest.NORMALIZE_WHITESPACE)
    ran, seen = 0, set()
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        for name, obj in _public_objects():
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            # doctest's usual namespace (the defining module's globals, a copy), plus ``pnode`` and
            # ``torch`` already imported, as numpy's doctests have ``np``
            import pnode

            globs = {**vars(sys.modules[obj.__module__]), "pnode": pnode, "torch": torch}
            for test in finder.find(obj, name, globs=globs):
                if test.examples:
                    report: list[str] = []
                    result = runner.run(test, out=report.append)
                    assert result.failed == 0, f"docstring example of {name} failed:\n" + "".join(report)
                    ran += result.attempted
    finally:
        torch.set_default_dtype(previous_dtype)
    assert ran > 0


# ---------------------------------------------------------------------------- the gallery
GALLERY = os.path.join(DOCS, "gallery")
EXAMPLES = os.path.join(REPO, "examples")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def test_gallery_has_a_page_per_example():
    """Every examples/*.py has docs/gallery/<name>.md with its command, a figure that exists and its run time,
    and the gallery index lists it."""
    with open(os.path.join(GALLERY, "index.md"), encoding="utf-8") as handle:
        index = handle.read()
    problems = []
    for script in sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py")):
        name = script[:-3]
        page = os.path.join(GALLERY, f"{name}.md")
        if not os.path.isfile(page):
            problems.append(f"no page docs/gallery/{name}.md for examples/{script}")
            continue
        with open(page, encoding="utf-8") as handle:
            text = handle.read()
        images = IMAGE.findall(text)
        if f"examples/{script}" not in text:
            problems.append(f"{name}.md does not give the command (examples/{script})")
        if not images:
            problems.append(f"{name}.md has no figure")
        for image in images:
            if not os.path.isfile(os.path.normpath(os.path.join(GALLERY, image))):
                problems.append(f"{name}.md: missing image {image}")
        if "Run time here" not in text:
            problems.append(f"{name}.md does not state its run time here")
        if not re.search(rf"^{re.escape(name)}$", index, re.M):
            problems.append(f"docs/gallery/index.md does not list {name}")
    assert not problems, "\n".join(problems)


def test_committed_images_are_small():
    folder = os.path.join(DOCS, "_static", "gallery")
    sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".png")}
    assert sizes, "no gallery images"
    assert all(size < 200_000 for size in sizes.values()), sizes
