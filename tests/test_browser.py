"""In a real browser: the Dagster UI shows a SKU's thumbnail and its credits; the gallery's images render.

The demo pipeline runs against a test emulator workspace: ``flokan-dagster materialize`` fills a
DAGSTER_HOME instance, ``dagster-webserver`` serves it on a free loopback port, and headless
Chromium (Debian's ``chromium`` driven through ``chromium-driver`` by Selenium) opens the
hero_images partition page, the asset graph, and the gallery page ``materialize`` wrote.
Screenshots go to ``test-artifacts/browser/``; the README's pictures in ``docs/images/`` are copies.

``make test`` installs the browser first (``.ci/install-browser``); where it cannot be installed,
this test skips and says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from flokan_dagster.catalog import load_catalog
from flokan_dagster.demo import DEMO_CATALOG, HERO_MAPPING
from tests.support import Admin, Workspace

PROJECT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT / "test-artifacts" / "browser"
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SKUS = ("MUG-001", "TEE-002", "BAG-001", "LAMP-001")
STANDARD_CREDITS = 20
# No "join the community" dialog over the page, no telemetry from a test.
DAGSTER_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no browser: chromium and chromedriver are not installed and could not be "
    "(run `bash .ci/install-browser` as root, as `make test` does, or `apt-get install chromium chromium-driver`)",
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo_env(tmp_path: Path, workspace: Workspace, admin: Admin) -> dict[str, str]:
    """The environment of the demo pipeline on a fresh emulator workspace, with its own DAGSTER_HOME."""
    catalog_dir = tmp_path / "catalog"
    shutil.copytree(DEMO_CATALOG.parent, catalog_dir)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return {
        **os.environ,
        "FLOKAN_API_KEY": workspace.api_key,
        "FLOKAN_BASE_URL": admin.base_url,
        "FLOKAN_DATA_DIR": str(tmp_path / "data"),
        "FLOKAN_CATALOG": str(catalog_dir / "catalog.csv"),
        "DAGSTER_HOME": str(home),
    }


@pytest.fixture
def webserver(demo_env: dict[str, str]) -> Iterator[str]:
    """``dagster-webserver`` on the demo pipeline and DAGSTER_HOME; yields its URL, stops it and its code server."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (ARTIFACTS / "dagster-webserver.log").open("w")
    # Its own session, so the code server it spawns is stopped with it, by process group.
    process = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(PROJECT / "workspace.yaml")],
        cwd=PROJECT, env=demo_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"dagster-webserver exited ({process.returncode}); see {log.name}"
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"dagster-webserver did not answer within 60 s; see {log.name}"
            time.sleep(0.25)
        yield url
    finally:
        _stop_group(process)
        log.close()


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the process group led by ``process``: SIGTERM, then SIGKILL for whatever outlives 15 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    # The webserver may be gone while its code server (same group) is still shutting down.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=5)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium through chromedriver (both Debian's; nothing is downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1600,1300", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: webdriver.Chrome | WebElement, timeout_s: float) -> WebDriverWait:  # type: ignore[type-arg]
    """A wait that polls through React re-rendering: an element replaced while it is being checked
    (stale) counts as not there yet, like one not found, instead of failing the test."""
    return WebDriverWait(driver, timeout_s, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def click_when_ready(driver: webdriver.Chrome, locator: tuple[str, str], timeout_s: float = 60) -> None:
    """Click the element at ``locator`` once it is clickable, finding it again if a re-render replaced it."""

    def clicked(d: webdriver.Chrome) -> bool:
        element = expected_conditions.element_to_be_clickable(locator)(d)
        if not element:
            return False
        element.click()  # a stale element raises here, and the wait tries again
        return True

    wait(driver, timeout_s).until(clicked)


def metadata_row(driver: webdriver.Chrome, label: str, timeout_s: float = 60) -> WebElement:
    """The row of the metadata table whose first cell is ``label``, once the page has rendered it."""
    locator = (By.XPATH, f"//tr[td[1][normalize-space()='{label}']]")
    return wait(driver, timeout_s).until(expected_conditions.visibility_of_element_located(locator))


def metadata_value(driver: webdriver.Chrome, label: str, timeout_s: float = 60) -> str:
    """The last cell (the value) of the metadata row ``label``, read from the page as rendered now."""
    return metadata_row(driver, label, timeout_s).find_elements(By.TAG_NAME, "td")[-1].text.strip()


@pytest.mark.timeout(400)
def test_partition_page_shows_thumbnail_and_credits(
    demo_env: dict[str, str], webserver: str, browser: webdriver.Chrome, workspace: Workspace
) -> None:
    command = [str(BIN / "flokan-dagster"), "materialize"]
    for sku in SKUS:
        command += ["--sku", sku]
    done = subprocess.run(command, env=demo_env, cwd=PROJECT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert workspace.info()["credits_deducted"] == STANDARD_CREDITS * len(SKUS) * 2  # hero and lifestyle

    sku = SKUS[0]
    try:
        browser.get(f"{webserver}/assets/hero_images?view=partitions&partition={sku}")
        credits = metadata_row(browser, "flokan/job_credits")
        assert credits.find_elements(By.TAG_NAME, "td")[1].text.strip() == str(STANDARD_CREDITS)
        assert metadata_row(browser, "flokan/outcome").find_elements(By.TAG_NAME, "td")[1].text.strip() == "made"
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", credits)
        browser.save_screenshot(str(ARTIFACTS / f"hero_images-{sku}-metadata.png"))

        # Markdown metadata opens in a dialog: the thumbnail is the base64 JPEG rendered there.
        metadata_row(browser, "flokan/thumbnail").find_element(By.XPATH, ".//a[normalize-space()='[Show Markdown]']").click()
        thumbnail = wait(browser, 20).until(
            expected_conditions.visibility_of_element_located(
                (By.CSS_SELECTOR, f"img[alt='{sku}'][src^='data:image/jpeg;base64,']")
            )
        )
        wait(browser, 10).until(lambda _: thumbnail.get_property("naturalWidth") > 0)
        assert thumbnail.size["width"] > 32 and thumbnail.size["height"] > 32
        browser.save_screenshot(str(ARTIFACTS / f"hero_images-{sku}-thumbnail.png"))
        assert workspace.api_key not in browser.page_source

        # The asset graph of the demo pipeline.
        browser.get(f"{webserver}/asset-groups/flokan")
        wait(browser, 60).until(
            lambda d: all(d.find_elements(By.XPATH, f"//*[normalize-space()='{name}']")
                          for name in ("hero_images", "lifestyle_images", "flokan_gallery"))
        )  # fmt: skip
        wait(browser, 60).until(lambda d: not d.find_elements(By.XPATH, "//*[starts-with(normalize-space(), 'Loading')]"))
        browser.save_screenshot(str(ARTIFACTS / "asset-graph.png"))

        # The gallery materialize wrote: every SKU's images render, with their credits and status.
        gallery = Path(done.stdout.split("gallery: ")[1].split()[0])
        assert gallery == Path(demo_env["FLOKAN_DATA_DIR"]) / "gallery" / "index.html"
        browser.get(gallery.as_uri())
        images = wait(browser, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "section.sku figure img") or False
        )
        assert len(images) == len(SKUS) * 2
        wait(browser, 30).until(
            lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images)
        )
        assert all(image.size["width"] > 100 for image in images)
        cards = {c.get_attribute("data-sku"): c.text for c in browser.find_elements(By.CSS_SELECTOR, "section.sku")}
        assert set(cards) == set(SKUS)
        assert all(f"{STANDARD_CREDITS} credits" in text and "completed" in text for text in cards.values())
        browser.save_screenshot(str(ARTIFACTS / "gallery.png"))
        browser.get(gallery.with_name("contact_sheet.png").as_uri())
        sheet = wait(browser, 30).until(lambda d: d.find_elements(By.TAG_NAME, "img") or False)[0]
        assert browser.execute_script("return arguments[0].naturalWidth", sheet) > 0
        assert workspace.api_key not in gallery.read_text()
    except BaseException:
        browser.save_screenshot(str(ARTIFACTS / "failure.png"))
        raise


@pytest.fixture
def daemon(demo_env: dict[str, str], webserver: str) -> Iterator[None]:
    """``dagster-daemon run`` on the same DAGSTER_HOME: it runs the backfill and the automation condition sensor."""
    log = (ARTIFACTS / "dagster-daemon.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(PROJECT / "workspace.yaml")],
        cwd=PROJECT, env=demo_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield
    finally:
        _stop_group(process)
        log.close()


def _report_total(instance_home: str) -> int | None:
    """The cost report's latest ``flokan/total_credits`` in the instance, or None before its first run."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(instance_home)
    try:
        event = instance.get_latest_materialization_event(dg.AssetKey("flokan_cost_report"))
        if event is None or event.asset_materialization is None:
            return None
        return int(event.asset_materialization.metadata["flokan/total_credits"].value)  # type: ignore[arg-type]
    finally:
        instance.dispose()


@pytest.mark.timeout(420)
def test_a_backfill_launched_from_the_ui_refreshes_the_cost_report(
    demo_env: dict[str, str], webserver: str, daemon: None, browser: webdriver.Chrome, workspace: Workspace
) -> None:
    # One SKU made and reported from the CLI: the report shows 20 credits.
    command = [str(BIN / "flokan-dagster"), "materialize", "--asset", "hero_images", "--sku", SKUS[0]]
    done = subprocess.run(command, env=demo_env, cwd=PROJECT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _report_total(demo_env["DAGSTER_HOME"]) == STANDARD_CREDITS
    every_sku = STANDARD_CREDITS * len(load_catalog(demo_env["FLOKAN_CATALOG"], HERO_MAPPING).partition_keys)

    try:
        # Backfill every SKU of hero_images from the asset's page: the first is reused, the others are made.
        browser.get(f"{webserver}/assets/hero_images")
        click_when_ready(browser, (By.XPATH, "//button[.//span[normalize-space()='Materialize…' or "
                                             "normalize-space()='Materialize...' or normalize-space()='Materialize']]"))  # fmt: skip
        dialog = wait(browser, 30).until(
            expected_conditions.visibility_of_element_located((By.XPATH, "//div[@role='dialog']"))
        )
        browser.save_screenshot(str(ARTIFACTS / "backfill-dialog.png"))
        dialog.find_element(By.XPATH, ".//button[normalize-space()='All']").click()
        launch = wait(dialog, 30).until(lambda d: next(
            (b for b in d.find_elements(By.XPATH, ".//button[contains(normalize-space(), 'Launch')]") if b.is_enabled()),
            False))  # fmt: skip
        browser.save_screenshot(str(ARTIFACTS / "backfill-selected.png"))
        launch.click()

        # The daemon runs the backfill, then the automation condition sensor refreshes the report.
        deadline = time.monotonic() + 300
        while _report_total(demo_env["DAGSTER_HOME"]) != every_sku:
            assert time.monotonic() < deadline, "the cost report was not refreshed within 300 s; see the daemon log"
            time.sleep(2)
        assert workspace.info()["credits_deducted"] == every_sku  # SKUS[0] reused, not paid again

        browser.get(f"{webserver}/assets/flokan_cost_report")
        # The overview's metadata table: key, when it was recorded, value.
        wait(browser, 60).until(lambda d: metadata_value(d, "flokan/total_credits") == str(every_sku))
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metadata_row(browser, "flokan/total_credits"))
        browser.save_screenshot(str(ARTIFACTS / "cost-report-after-backfill.png"))
        assert workspace.api_key not in browser.page_source
    except BaseException:
        browser.save_screenshot(str(ARTIFACTS / "backfill-failure.png"))
        raise
