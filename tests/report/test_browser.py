"""The HTML report in headless Chromium: no console errors, no broken images, a screenshot.

Skipped when Chromium is not installed, unless ADVFACE_REQUIRE_BROWSER=1 (set in CI), where a
missing browser is a failure rather than a silently skipped check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from advface.report.browser import check_page, find_chromium
from advface.report.build import ReportPaths

CHROMIUM = find_chromium()


@pytest.fixture(scope="module", autouse=True)
def _need_chromium() -> None:
    if CHROMIUM is None:
        if os.environ.get("ADVFACE_REQUIRE_BROWSER") == "1":
            pytest.fail("ADVFACE_REQUIRE_BROWSER=1 but Chromium is not installed "
                        "(apt-get install -y chromium)")
        pytest.skip("Chromium not installed (apt-get install -y chromium); "
                    "set ADVFACE_REQUIRE_BROWSER=1 to make this a failure")


def test_report_opens_cleanly_and_is_screenshotted(built: ReportPaths, tmp_path: Path) -> None:
    shot = built.out_dir / "report_screenshot.png"
    check = check_page(built.html, screenshot=shot)
    assert check.ok, "\n".join(check.problems)
    assert check.n_images == len(built.figures)
    assert check.page_height > 3000  # the whole report laid out, not an error page
    with Image.open(shot) as im:
        assert im.format == "PNG"
        assert im.width == 1280 and im.height == check.page_height
        # Not a blank page: the screenshot has text and figures, i.e. many distinct colours.
        assert len(im.convert("RGB").resize((320, 320)).getcolors(1 << 16) or []) > 200


def test_checker_sees_errors_broken_images_and_external_requests(tmp_path: Path) -> None:
    """The check is not vacuous: a bad page is reported on every count."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
        "<img src='missing.png' alt='gone'>"
        # Loopback only: a port nothing listens on, so the request fails locally.
        "<img src='http://127.0.0.1:9/x.png' alt='remote'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    check = check_page(page)
    assert not check.ok
    assert any("boom" in m for m in check.console_errors)
    assert any("undefinedFunction" in m for m in check.exceptions)
    assert "gone" in check.broken_images and "remote" in check.broken_images
    assert any("127.0.0.1:9" in u for u in check.external_requests)
    assert check.log_errors  # failed loads are logged by the browser too
