"""The vendored third-party files are exactly what scripts/vendor-ui.py fetched."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from api.routers.ui import UI_DIR

VENDOR = UI_DIR / "vendor"


def test_every_vendored_file_matches_its_recorded_sha256() -> None:
    entries = json.loads((VENDOR / "VERSIONS").read_text())
    for entry in entries:
        data = (VENDOR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert entry["version"], entry
        assert entry["license"] not in ("", "UNKNOWN"), entry
    listed = {e["file"] for e in entries}
    present = {p.name for p in VENDOR.iterdir() if p.is_file() and p.name != "VERSIONS"}
    assert present == listed, f"unlisted or missing vendored files: {present ^ listed}"
    licences = {p.stem for p in (VENDOR / "LICENSES").iterdir()}
    assert {e["package"] for e in entries} <= licences
    print(f"vendored: {len(entries)} files from {len({e['package'] for e in entries})} packages")


def test_app_modules_name_no_other_host() -> None:
    """No module of the app loads anything from a CDN (the browser tests check it live too)."""
    for path in sorted(Path(UI_DIR).rglob("*")):
        if path.suffix not in (".js", ".html", ".css") or "vendor" in path.parts:
            continue
        text = path.read_text()
        assert "http://" not in text, path
        assert "https://" not in text, path


def test_the_javascript_of_a_page_fits_150_kb_gzipped() -> None:
    """Every module the UI loads (the app and its vendored Preact and uPlot), gzipped."""
    files = [
        *list((UI_DIR / "app").rglob("*.js")),
        VENDOR / "preact-htm.module.js",
        VENDOR / "uPlot.module.min.js",
    ]
    raw = sum(p.stat().st_size for p in files)
    packed = sum(len(gzip.compress(p.read_bytes(), 6)) for p in files)
    print(f"UI JavaScript: {len(files)} files, {raw / 1024:.0f} KB, {packed / 1024:.1f} KB gzipped")
    assert packed < 150 * 1024
