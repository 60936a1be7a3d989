"""The page shell: index.html preloads every module main.js imports, boot.js every page's."""

from __future__ import annotations

import re

from api.routers.ui import UI_DIR


def test_index_preloads_every_module_of_the_app() -> None:
    """A module left out is fetched only when its importer has run: one more round trip
    before the first paint for each level of imports. Pages load when shown (main.js), and
    boot.js preloads the modules of the page a visit opens."""
    html = (UI_DIR / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/ui/([^"]+)"[^>]*>', html))
    modules = {
        p.relative_to(UI_DIR).as_posix()
        for p in (UI_DIR / "app").rglob("*.js")
        if p.name not in ("boot.js", "main.js")  # a classic script; the entry point itself
    }
    pages = {m for m in modules if m.startswith("app/pages/")}
    shared = modules - pages | {"app/pages/login.js"}  # the sign-in page is imported statically
    print(f"{len(preloaded & modules)} of {len(modules)} app modules preloaded by index.html")
    assert shared <= preloaded, f"not preloaded: {sorted(shared - preloaded)}"
    assert all((UI_DIR / p).exists() for p in preloaded), "a preload names a missing file"

    boot = (UI_DIR / "app" / "boot.js").read_text()
    by_boot = {f"app/pages/{f}" for f in re.findall(r'"([\w-]+\.js)"', boot)}
    main = (UI_DIR / "app" / "main.js").read_text()
    lazy = {f"app/{f}" for f in re.findall(r'import\("\./(pages/[\w-]+\.js)"\)', main)}
    print(f"{len(lazy)} pages load when shown; boot.js preloads {len(by_boot)} page modules")
    imported = {  # pages that are parts of other pages (a job's tabs)
        f"app/pages/{dep}"
        for page in pages
        for dep in re.findall(r'from "\./([\w-]+\.js)"', (UI_DIR / page).read_text())
    }
    assert lazy | imported == pages - {"app/pages/login.js"}, "main.js does not load every page"
    assert by_boot == pages - {"app/pages/login.js"}, "boot.js does not preload every page"
    pattern = r'\["/[^"]*", \[([^\]]+)\]\]'
    listed = [re.findall(r'"([\w-]+\.js)"', e) for e in re.findall(pattern, boot)]
    entries = {files[0]: files for files in listed}
    for path in sorted(lazy - {"app/pages/home.js"}):
        # the other pages a page imports are preloaded with it
        name = path.rsplit("/", 1)[1]
        deps = re.findall(r'from "\./([\w-]+\.js)"', (UI_DIR / path).read_text())
        assert name in entries, f"boot.js has no entry for {name}"
        assert set(deps) <= set(entries[name]), f"{name} imports {deps}: {entries[name]}"
