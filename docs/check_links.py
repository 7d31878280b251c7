"""Check that every local link and image of the built HTML site resolves: ``python docs/check_links.py DIR``.

External links (``http:``, ``https:``, ``mailto:``, ...) are not fetched: the build machines have no
internet.  A local ``href``/``src`` must name an existing file, and a ``#fragment`` must name an ``id``
(or ``<a name>``) in the target page.  Exit status 1 lists every broken link with the page it is on.
"""

from __future__ import annotations

import os
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

EXTERNAL_SCHEMES = {"http", "https", "mailto", "ftp", "data", "javascript", "tel"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []     # (attribute, value)
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
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
    """Every broken local link under ``site`` as ``"page: link (why)"``, and the number of links checked."""
    pages: dict[str, _Page] = {}
    for folder, _, files in os.walk(site):
        for name in files:
            if name.endswith(".html"):
                path = os.path.normpath(os.path.join(folder, name))
                pages[path] = _parse(path)
    problems, checked = [], 0
    for path, page in sorted(pages.items()):
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
    for problem in problems:
        print(f"broken link: {problem}", file=sys.stderr)
    print(f"check_links: {checked} local links and images checked, {len(problems)} broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
