"""Check the built HTML site: ``python docs/check_links.py DIR``.

* Every local link and image resolves.  External links (``http:``, ``https:``, ``mailto:``, ...) are not
  fetched: the build machines have no internet.  A local ``href``/``src`` must name an existing file, and
  a ``#fragment`` must name an ``id`` (or ``<a name>``) in the target page.
* No page shows raw reStructuredText (``.. autofunction::``, ``:param x:``): the sign of an autodoc
  directive whose output was parsed as Markdown, which Sphinx itself does not warn about.

Exit status 1 lists every problem with the page it is on.
"""

from __future__ import annotations

import os
import re
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

EXTERNAL_SCHEMES = {"http", "https", "mailto", "ftp", "data", "javascript", "tel"}
RAW_RST = re.compile(r"\.\. (?:py:|auto)\w+::|:param \w+:|:rtype:|\.\. rubric::")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []     # (attribute, value)
        self.anchors: set[str] = set()
        self.text: list[str] = []                  # visible text outside <pre> (code may quote reST)
        self._pre = 0

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._pre -= 1

    def handle_data(self, data: str) -> None:
        if not self._pre:
            self.text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self._pre += 1
        values = dict(attrs)
        for name in ("id",) + (("name",) if tag == "a" else ()):
            if values.get(name):
                self.anchors.add(values[name])
        for name in ("href", "src"):
            if values.get(name) and not (tag == "link" and values.get("rel") in ("preconnect", "dns-prefetch")):
                self.links.append((name, values[name]))


def _parse(path: str) -> _Page:
    page = _Page()
    with open(path, encoding="utf-8") as handle:
        page.feed(handle.read())
    return page


def broken_links(site: str) -> tuple[list[str], int]:
    """Every problem of the pages under ``site`` as ``"page: what (why)"``, and the number of links checked."""
    pages: dict[str, _Page] = {}
    for folder, _, files in os.walk(site):
        for name in files:
            if name.endswith(".html"):
                path = os.path.normpath(os.path.join(folder, name))
                pages[path] = _parse(path)
    problems, checked = [], 0
    for path, page in sorted(pages.items()):
        leaked = RAW_RST.search(" ".join(page.text))
        if leaked:
            problems.append(f"{os.path.relpath(path, site)}: raw reStructuredText {leaked.group(0)!r} in the page "
                            "(an autodoc directive outside an {eval-rst} block?)")
        for _attribute, link in page.links:
            parts = urlsplit(link)
            if parts.scheme in EXTERNAL_SCHEMES or parts.netloc:
                continue
            checked += 1
            target = path if not parts.path else os.path.normpath(
                os.path.join(os.path.dirname(path), unquote(parts.path)))
            if os.path.isdir(target):
                target = os.path.join(target, "index.html")
            where = os.path.relpath(path, site)
            if not os.path.exists(target):
                problems.append(f"{where}: {link} (no file {os.path.relpath(target, site)})")
                continue
            if parts.fragment and target.endswith(".html"):
                anchors = pages[target].anchors if target in pages else _parse(target).anchors
                if unquote(parts.fragment) not in anchors:
                    problems.append(f"{where}: {link} (no anchor #{parts.fragment} in "
                                    f"{os.path.relpath(target, site)})")
    return problems, checked


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    site = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build", "html")
    if not os.path.isfile(os.path.join(site, "index.html")):
        print(f"check_links: {site} has no index.html; build the site first (make docs)", file=sys.stderr)
        return 1
    problems, checked = broken_links(site)
    pages = [f for _, _, files in os.walk(site) for f in files if f.endswith('.html')]
    for problem in problems:
        print(f"check_links: {problem}", file=sys.stderr)
    print(f"check_links: {len(pages)} pages, {checked} local links and images checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
