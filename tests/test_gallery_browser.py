"""index.html opened in a real browser (headless Chromium): every image on the page loads from the file system."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from test_cli import xai_graph_cli

# Written into a copy of the page beside it: once everything has loaded, the page reports what the browser saw.
_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src);
  const report = document.createElement("pre");
  report.id = "probe";
  report.textContent = `loaded=${images.length - broken.length} total=${images.length} broken=${broken.join(",")}`;
  document.body.appendChild(report);
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        if os.environ.get("XAI_GRAPH_REQUIRE_BROWSER"):
            pytest.fail("headless Chromium is required here (apt-get install chromium chromium-driver)")
        pytest.skip("Chromium is not installed")
    return path


def test_gallery_page_loads_every_image(tmp_path):
    browser = _chromium()
    out = tmp_path / "demo"
    result = xai_graph_cli("demo", out)
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text()
    expected_images = page.count("<img ")
    assert expected_images == 4 * 2  # per photo: the photo and its overlay
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    report = re.search(r'<pre id="probe">loaded=(\d+) total=(\d+) broken=([^<]*)</pre>', dom)
    assert report, dom[-2000:]
    loaded, total, broken = int(report.group(1)), int(report.group(2)), report.group(3)
    assert total == expected_images and loaded == total, f"broken images: {broken}"
