"""Data Docs that read the same with no network: the CSS and JavaScript GX loads from CDNs, shipped.

GX's pages link bootstrap, jQuery, popper, bootstrap-table, bootstrap-datepicker, Font Awesome and Vega
from CDNs, so on an air-gapped cluster the report is unstyled and its tables are empty. The same files are
npm packages, pinned in ``infra/data-docs-assets/package.json`` and its lock; ``make setup`` installs
them (``npm ci``). :func:`ship_assets` copies the files the pages name into ``<docs>/static/vendor/`` and
points every link at them.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from components.errors import StageError

#: Where ``make setup`` puts the packages (``npm ci --prefix infra/data-docs-assets``), under a project root.
ASSETS_PATH = Path("infra") / "data-docs-assets" / "node_modules"
#: Overrides the search (a folder of the installed packages).
ASSETS_ENV = "CODEMILL_DATA_DOCS_ASSETS"


def assets_dir() -> Path:
    """The installed packages: ``$CODEMILL_DATA_DOCS_ASSETS``, else the first project root holding them
    among the code's own and the working directory's parents (a ``dvc exp run --temp`` workspace lies
    inside the project, under ``.dvc/tmp``)."""
    if os.environ.get(ASSETS_ENV):
        return Path(os.environ[ASSETS_ENV])
    roots = [Path(__file__).resolve().parents[2], *Path.cwd().resolve().parents, Path.cwd().resolve()]
    found = next((root / ASSETS_PATH for root in roots if (root / ASSETS_PATH).is_dir()), None)
    return found or roots[0] / ASSETS_PATH


#: ``(CDN prefix, npm package folder, files)``: every address GX 1.x's templates link is a prefix plus a file,
#: and the same file lies in the package folder.
_CDN_FILES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/",
        "@forevolve/bootstrap-dark/dist/css/",
        ("bootstrap-prefers-dark.css",),
    ),
    (
        "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/",
        "bootstrap-datepicker/dist/",
        ("css/bootstrap-datepicker.min.css", "js/bootstrap-datepicker.min.js"),
    ),
    (
        "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/",
        "@fortawesome/fontawesome-free/",
        ("css/all.min.css",),
    ),
    ("https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/", "bootstrap/dist/", ("css/bootstrap.min.css",)),
    ("https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/", "bootstrap/dist/", ("js/bootstrap.min.js",)),
    (
        "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/",
        "bootstrap-table/dist/extensions/filter-control/",
        ("bootstrap-table-filter-control.css", "bootstrap-table-filter-control.min.css"),
    ),
    (
        "https://unpkg.com/bootstrap-table@1.19.1/dist/",
        "bootstrap-table/dist/",
        (
            "bootstrap-table.min.css",
            "bootstrap-table.min.js",
            "extensions/filter-control/bootstrap-table-filter-control.min.js",
        ),
    ),
    ("https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/", "popper.js/dist/", ("umd/popper.min.js",)),
)
#: Each CDN address -> the same file in its npm package.
CDN_ASSETS: dict[str, str] = {
    prefix + name: folder + name for prefix, folder, names in _CDN_FILES for name in names
} | {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
}
#: Folders a shipped stylesheet loads from by relative path (Font Awesome's ``../webfonts/``).
CDN_FOLDERS = ("@fortawesome/fontawesome-free/webfonts",)
VENDOR_DIR = "static/vendor"


def ship_assets(docs_dir: str | Path, assets: Path | None = None) -> int:
    """Copy the assets into ``<docs_dir>/static/vendor`` and point every page's CDN links at them.

    Returns how many links were rewritten. A StageError names the folder when the assets are not installed.
    """
    assets = assets or assets_dir()
    missing = [path for path in [*CDN_ASSETS.values(), *CDN_FOLDERS] if not (assets / path).exists()]
    if missing:
        raise StageError(
            f"validate: Data Docs assets missing under {assets} ({missing[0]} and {len(missing) - 1} "
            f"more): run `make setup` (npm ci --prefix infra/data-docs-assets) or set {ASSETS_ENV}"
        )
    docs_dir = Path(docs_dir)
    vendor = docs_dir / VENDOR_DIR
    for relative in [*CDN_ASSETS.values(), *CDN_FOLDERS]:
        target = vendor / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if (assets / relative).is_dir():
            shutil.copytree(assets / relative, target, dirs_exist_ok=True)
        else:
            shutil.copy2(assets / relative, target)
    rewritten = 0
    for page in docs_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        prefix = os.path.relpath(vendor, page.parent)
        for url, relative in CDN_ASSETS.items():
            for quoted in (f'"{url}"', f"'{url}'"):
                if quoted in text:
                    rewritten += text.count(quoted)
                    text = text.replace(quoted, quoted[0] + f"{prefix}/{relative}" + quoted[0])
        page.write_text(text, encoding="utf-8")
    return rewritten


def remote_assets(docs_dir: str | Path) -> list[str]:
    """Scripts and stylesheets the pages still load from the network (``<script src>``, ``<link href>``)."""
    found: set[str] = set()
    for page in Path(docs_dir).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        found.update(re.findall(r"""<script[^>]*\ssrc=["'](https?://[^"']+)""", text))
        found.update(re.findall(r"""<link[^>]*\shref=["'](https?://[^"']+)""", text))
    return sorted(found)
