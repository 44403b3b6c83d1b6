"""Data Docs read the same with no network: every asset ships with the report, and headless Chromium,
with every address unresolvable, renders the styled page and its JavaScript validation tables."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from components.stage_runner import call_stage
from components.validate import STAGE
from components.validate.offline import CDN_ASSETS, remote_assets
from tests.conftest import PROJECT_ROOT, make_params
from tests.test_validate import good_rows, write_corpus

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Written into the page by a script run after the page's own: what a reader's browser computed.
PROBE = """<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    document.body.setAttribute('data-font', getComputedStyle(document.body).fontFamily);
    document.body.setAttribute('data-jquery', typeof window.jQuery);
    document.body.setAttribute('data-tables', document.querySelectorAll('.bootstrap-table').length);
  }, 500);
});
</script>"""


@pytest.fixture(scope="module")
def data_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The validate stage's Data Docs for a good corpus, built in a copy of the project's GX context."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(PROJECT_ROOT / "gx", root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    corpus = root / "clean"
    corpus.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        call_stage(
            STAGE,
            make_params(executor={"workers": 1}),
            [write_corpus(corpus, good_rows())],
            str(root / "docs"),
        )
    return root / "docs"


def test_every_asset_ships_with_the_report(data_docs: Path) -> None:
    assert remote_assets(data_docs) == []
    pages = list(data_docs.rglob("*.html"))
    assert len(pages) >= 2
    for relative in set(CDN_ASSETS.values()):
        assert (data_docs / "static" / "vendor" / relative).is_file(), relative
    assert any((data_docs / "static/vendor/@fortawesome/fontawesome-free/webfonts").glob("*.woff2"))


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: `make setup` installs Debian's chromium where apt works"
)
def test_headless_chromium_renders_the_validation_page_offline(data_docs: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    (page,) = [p for p in (data_docs / "validations").rglob("*.html")]
    probed = page.with_name("probed.html")
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    offline = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: any CDN fetch fails
        "--proxy-server=http://127.0.0.1:9",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    ]
    dom = subprocess.run([CHROMIUM, *offline], capture_output=True, text=True, timeout=120, check=True).stdout
    body = dom[dom.index("<body") : dom.index(">", dom.index("<body"))]
    assert 'data-jquery="function"' in body, body
    assert "Segoe UI" in body or "system-ui" in body, f"bootstrap's font stack is not applied: {body}"
    tables = int(body.split('data-tables="')[1].split('"')[0])
    assert tables >= 1, "bootstrap-table did not render the validation tables"
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert "values must never be null" in text and "languages ingest emits" in text  # the table's rows
