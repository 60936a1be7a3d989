"""The page shell: index.html preloads every module of the app."""

from __future__ import annotations

import re

from api.routers.ui import UI_DIR


def test_index_preloads_every_module_of_the_app() -> None:
    """A module left out is fetched only when its importer has run: one more round trip
    before the first paint for each level of imports."""
    html = (UI_DIR / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/ui/([^"]+)">', html))
    modules = {
        p.relative_to(UI_DIR).as_posix()
        for p in (UI_DIR / "app").rglob("*.js")
        if p.name not in ("boot.js", "main.js")  # a classic script; the entry point itself
    }
    print(f"{len(preloaded & modules)} of {len(modules)} app modules preloaded")
    assert modules <= preloaded, f"not preloaded: {sorted(modules - preloaded)}"
    assert all((UI_DIR / p).exists() for p in preloaded), "a preload names a missing file"
