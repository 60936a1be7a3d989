#!/usr/bin/env python3
"""Vendor the web UI's third-party files from pinned npm packages (dev time only).

Run it when a version below changes: it fetches each package with `npm pack` into a temporary
folder, copies the few files the UI serves into api/ui/vendor/, and writes
api/ui/vendor/VERSIONS (package, version, licence and sha256 of every file). The server never
needs Node or the registry: the vendored files are committed, and tests/ui/test_vendor.py
checks them against VERSIONS so a hand edit fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "api" / "ui" / "vendor"


@dataclass(frozen=True)
class Pick:
    """One file taken from a package: where it is in the tarball and its name in vendor/."""

    source: str
    target: str
    # uPlot ships its minified build only as an IIFE: appending an ES export turns it into a
    # module (22 KB gzipped instead of the 42 KB unminified ESM build)
    esm_export: str | None = None


PACKAGES: dict[str, tuple[str, list[Pick]]] = {
    "htm": (
        "3.1.1",
        [Pick("preact/standalone.module.js", "preact-htm.module.js")],
    ),
    "uplot": (
        "1.6.32",
        [
            Pick("dist/uPlot.iife.min.js", "uPlot.module.min.js", esm_export="uPlot"),
            Pick("dist/uPlot.min.css", "uPlot.min.css"),
        ],
    ),
    "swagger-ui-dist": (
        "5.35.0",
        [
            Pick("swagger-ui-bundle.js", "swagger-ui-bundle.js"),
            Pick("swagger-ui.css", "swagger-ui.css"),
        ],
    ),
    "redoc": (
        "3.0.1",
        [Pick("bundles/redoc.standalone.js", "redoc.standalone.js")],
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(name: str, version: str, into: Path) -> Path:
    """`npm pack name@version` into `into`; returns the unpacked package folder."""
    out = subprocess.run(
        ["npm", "pack", "--silent", f"{name}@{version}", "--pack-destination", str(into)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tarball = into / out.splitlines()[-1]
    folder = into / name.replace("/", "_")
    with tarfile.open(tarball) as tf:
        tf.extractall(folder, filter="data")
    return folder / "package"


def main() -> int:
    if shutil.which("npm") is None:
        print("npm is needed to vendor the UI files (only at dev time)", file=sys.stderr)  # noqa: T201
        return 1
    VENDOR.mkdir(parents=True, exist_ok=True)
    (VENDOR / "LICENSES").mkdir(exist_ok=True)
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (version, picks) in PACKAGES.items():
            pkg = fetch(name, version, Path(tmp))
            meta = json.loads((pkg / "package.json").read_text())
            if meta["version"] != version:
                raise SystemExit(f"{name}: got {meta['version']}, pinned {version}")
            licence = meta.get("license", "UNKNOWN")
            licence_file = next(
                (p for p in sorted(pkg.iterdir()) if p.name.upper().startswith("LICEN")), None
            )
            if licence_file is not None:
                shutil.copyfile(licence_file, VENDOR / "LICENSES" / f"{name}.txt")
            for pick in picks:
                src = pkg / pick.source
                dst = VENDOR / pick.target
                data = src.read_bytes()
                if pick.esm_export:
                    data += f"\nexport default {pick.esm_export};\n".encode()
                dst.write_bytes(data)
                entries.append(
                    {
                        "file": pick.target,
                        "package": name,
                        "version": version,
                        "license": licence,
                        "source": pick.source + (" + ES export" if pick.esm_export else ""),
                        "source_sha256": sha256(src),
                        "sha256": sha256(dst),
                    }
                )
                print(f"{pick.target:28} {name}@{version} {licence} {entries[-1]['sha256'][:12]}")  # noqa: T201
    (VENDOR / "VERSIONS").write_text(json.dumps(entries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
