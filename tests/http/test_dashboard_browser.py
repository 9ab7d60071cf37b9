"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium.

Against a real ``docksnap serve``, engine and store: log in, find a snapshot
made here, open its file tree, download a file and compare its bytes, open a
diff, look at a container's timeline and the store page, run verify and gc
with live progress. Every page is saved as a screenshot in the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from docksnap.cli import render
from tests.conftest import unique_name
from tests.http.conftest import TOKEN, Server

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Flags for a sandbox-less container with no network but loopback: nothing may
# phone home, and a fresh profile per test.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,1000",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromium-driver are missing: run scripts/setup tools")
    # Selenium must never fetch a driver from the internet.
    os.environ["SE_OFFLINE"] = "true"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[Any], Any], timeout: float = 60) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def downloaded(directory: Path, name: str, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    target = directory / name
    while time.monotonic() < deadline:
        if target.exists() and not list(directory.glob("*.crdownload")):
            return target.read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded; {list(directory.iterdir())}")


def test_dashboard_login_search_tree_download_diff_timeline_store(
    server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    label = unique_name("dash")
    box = server.start_box(
        "mkdir -p /w/src/pkg && echo 'print(42)' > /w/src/main.py"
        " && head -c 200000 /dev/urandom > /w/src/pkg/blob.bin && echo notes > /w/NOTES"
    )
    first = server.snapshot(box, "/w", name=label)
    changed = server.api.post(
        "/v1/containers/" + box + "/snapshots", json={"dir": "/w", "name": label + "-b"}
    )
    assert changed.status_code == 201
    second = changed.json()
    expected_blob = server.api.get(f"/v1/snapshots/{first['id']}/files/src/pkg/blob.bin").content
    assert len(expected_blob) == 200000

    # Log in: a wrong token first, then the right one.
    browser.get(server.base_url + "/")
    wait_for(browser, ec.url_contains("/login"))
    browser.find_element(By.ID, "token").send_keys("not-the-token-at-all")
    browser.find_element(By.ID, "login-form").submit()
    wait_for(browser, ec.presence_of_element_located((By.ID, "login-failed")))
    browser.save_screenshot(str(shots / "01-login.png"))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-form").submit()
    wait_for(browser, ec.presence_of_element_located((By.ID, "snapshots")))
    cookies = {c["name"]: c for c in browser.get_cookies()}
    session = cookies["docksnap_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert "docksnap_session" not in browser.execute_script("return document.cookie")

    # Search for the snapshot made above and open it.
    search = browser.find_element(By.ID, "search")
    search.send_keys(label)
    search.submit()
    row = wait_for(
        browser,
        ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-id="{first["id"]}"]')),
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#snapshots tbody tr[data-id]")) == 2
    # The stored-size column: what each save added. The second found every chunk
    # stored already (nothing changed), so it added only its tar index.
    stored = {}
    for record in (first, second):
        info = server.api.get(f"/v1/snapshots/{record['id']}").json()
        cell = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{record["id"]}"] td.stored')
        assert cell.text == render.size(info["stored_size"])
        assert "added to the store" in (cell.get_attribute("title") or "")
        stored[record["id"]] = info["stored_size"]
    assert stored[first["id"]] > len(expected_blob) > 50 * stored[second["id"]] > 0
    header = browser.find_element(By.XPATH, '//table[@id="snapshots"]//th[text()="Stored"]')
    assert "added to the store" in (header.get_attribute("title") or "")
    browser.save_screenshot(str(shots / "02-list.png"))
    row.find_element(By.TAG_NAME, "a").click()
    tree = wait_for(browser, ec.presence_of_element_located((By.ID, "file-tree")))
    assert first["id"] in browser.page_source
    for name in ("src/", "main.py", "NOTES"):
        assert name in tree.text
    browser.save_screenshot(str(shots / "03-snapshot.png"))

    # Download one file through the tree and compare its bytes.
    link = browser.find_element(By.CSS_SELECTOR, 'a.download[data-path="src/pkg/blob.bin"]')
    link.click()
    assert downloaded(tmp_path / "downloads", "blob.bin") == expected_blob

    # A diff against the second snapshot.
    Select(browser.find_element(By.ID, "diff-against")).select_by_value(second["id"])
    browser.find_element(By.ID, "diff-button").click()
    summary = wait_for(browser, ec.presence_of_element_located((By.ID, "diff-summary")))
    assert "changed" in summary.text
    browser.save_screenshot(str(shots / "04-diff.png"))

    # The container's timeline shows both snapshots, oldest first.
    browser.get(f"{server.base_url}/containers/{box}")
    timeline = wait_for(browser, ec.presence_of_element_located((By.ID, "timeline")))
    items = timeline.find_elements(By.TAG_NAME, "li")
    assert [label in items[0].text, label + "-b" in items[1].text] == [True, True]
    browser.save_screenshot(str(shots / "05-timeline.png"))

    # A restore through the restore cache, which the store page lists.
    server.start_box("true", snapshots=[{"id": first["id"], "mount_point": "/restored"}])

    # The store page: a chart, and verify and gc with live progress.
    browser.get(server.base_url + "/store")
    chart = wait_for(browser, ec.presence_of_element_located((By.ID, "chart")))
    assert len(chart.find_elements(By.TAG_NAME, "polyline")) == 2
    # The restore cache: listed, and pruned (an answer without events; the entry in use stays).
    link = browser.find_element(By.CSS_SELECTOR, f'#cache a[href="/snapshots/{first["id"]}"]')
    row = link.find_element(By.XPATH, "./ancestor::tr")
    assert row.find_elements(By.TAG_NAME, "td")[-1].text == "1"  # one container reads it
    operations = (
        ("verify-button", '"ok": true'),
        ("gc-button", '"bytes_deleted"'),
        ("cache-prune-button", '"removed"'),
    )
    for button, expect in operations:
        browser.find_element(By.ID, button).click()
        wait_for(
            browser,
            lambda d: d.find_element(By.ID, "operation").get_attribute("data-state") != "running",
        )
        assert browser.find_element(By.ID, "operation").get_attribute("data-state") == "done"
        assert expect in browser.find_element(By.ID, "operation-result").text
    browser.save_screenshot(str(shots / "06-store.png"))

    # A state-changing request without the CSRF header is refused, even with the cookie.
    status = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('/v1/store/gc', {method: 'POST', body: '{}',"
        " headers: {'Content-Type': 'application/json'}})"
        ".then(r => done(r.status));"
    )
    assert status == 403
    assert len(list(shots.iterdir())) == 6
