"""The support console through a real browser, against the service under gunicorn, on both backends.

Debian's chromium, driven by Selenium through /usr/bin/chromedriver (apt
packages chromium and chromium-driver: nothing is downloaded at run time),
headless and with JavaScript switched off, which proves the console needs
none. The journey: sign-in refused with a wrong token, signed in (by keyboard
only), search by email, phone number and contact id, masked values, reveal
(and its log line), the link graph's nodes and edges for a merged customer,
the customer's history, the erasure preview and its confirmation (the rows
are then gone from the database), sign-out. A second test starts the service
without an API token and sees the console refuse.

Every step leaves a screenshot in build/console-screenshots/<backend>/ (or
$FLUXKART_SCREENSHOTS/<backend>/); docs/console.md shows two of them. Without
chromium the tests skip locally and fail in CI (CI=true), like the MySQL ones.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.database import read_contacts
from tests.harness.gunicorn import Gunicorn, gunicorn_env
from tests.harness.required import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "console-test-token_5b7Q2x"
SECRET_KEY = "console-test-signing-key-0123456789abcdef"
# As for MariaDB: in CI (or with FLUXKART_REQUIRE_BROWSER=1) a missing browser fails the tests.
BROWSER_REQUIRED = bool(os.environ.get("CI") or os.environ.get("FLUXKART_REQUIRE_BROWSER"))
SCREENSHOTS = Path(os.environ.get("FLUXKART_SCREENSHOTS") or ROOT / "build" / "console-screenshots")
# Set FLUXKART_DOCS_SCREENSHOTS=1 to refresh the two pictures docs/console.md shows.
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"

# A merged customer: two customers (1 and 2) joined by an order carrying both
# of their identifiers, then two orders adding a new email and a new phone.
ORDERS = [
    ("dana@example.com", "+919876543210"),  # 1 primary
    ("lee@example.org", "+14155550123"),  # 2 primary
    ("dana@example.com", "+14155550123"),  # merges 2 into 1; creates nothing
    ("dana.work@example.net", "+919876543210"),  # 3 secondary: new email
    ("lee@example.org", "+447700900123"),  # 4 secondary: new phone
]
IDENTIFIERS = {value for order in ORDERS for value in order}
# Worked out by hand from the SPEC's rules, not from the code: rows 2, 3, 4 link to 1;
# 2 and 4 share lee@example.org; 1 and 3 share +919876543210.
LINK_EDGES = {("2", "1"), ("3", "1"), ("4", "1")}
EMAIL_EDGES = {("2", "4")}
PHONE_EDGES = {("1", "3")}
# One event per identify that changed the table, oldest first.
HISTORY_KINDS = ["created", "created", "merged", "linked", "linked"]


def require_browser() -> None:
    """Skip (locally) or fail (in CI) when chromium or chromedriver is missing."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        message = (
            f"{', '.join(missing)} missing (apt-get install chromium chromium-driver); "
            "the console's browser tests need it"
        )
        skip_or_fail(message, BROWSER_REQUIRED)


# --------------------------------------------------------------------------
# The service under gunicorn, and the browser
# --------------------------------------------------------------------------


def start_service(settings: dict[str, Any], workdir: Path, **extra: str) -> Gunicorn:
    """The service under gunicorn with 2 sync workers: a session signed by one must hold on the other."""
    service = Gunicorn(gunicorn_env({**settings, **extra}, 2, 1, "sync"), workdir, app_dir=ROOT)
    service.start(ready_path="/health/ready")
    return service


class Browser:
    """Headless chromium with JavaScript off, its own profile, and a screenshot per step."""

    def __init__(self, base_url: str, profile: Path, shots: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ):
            options.add_argument(argument)
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        # The console's messages (CSP violations among them) for csp_violations().
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to fetch a driver
        self.driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
        self.base_url = base_url
        self.profile = profile
        self.shots = shots
        self.urls: list[str] = []
        shots.mkdir(parents=True, exist_ok=True)

    def get(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self.urls.append(self.driver.current_url)

    def find(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def find_all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def submit(self, selector: str) -> None:
        """Click a submit button and wait until the next page has loaded."""
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.find("html")
        self.find(selector).click()
        WebDriverWait(self.driver, 20).until(lambda d: _is_stale(old))
        self.urls.append(self.driver.current_url)

    def text(self) -> str:
        return str(self.find("body").text)

    def source(self) -> str:
        return str(self.driver.page_source)

    def path(self) -> str:
        return str(self.driver.current_url).removeprefix(self.base_url)

    def shoot(self, name: str) -> Path:
        """A screenshot of the whole page (not only the window), via the DevTools protocol."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics["cssContentSize"]
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            },
        )
        path = self.shots / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def history_urls(self) -> list[str]:
        """Every URL in the profile's browsing history (read after quit, when chromium has written it)."""
        history = self.profile / "Default" / "History"
        conn = sqlite3.connect(f"file:{history}?mode=ro", uri=True)
        try:
            return [row[0] for row in conn.execute("SELECT url FROM urls")]
        finally:
            conn.close()

    def csp_violations(self) -> list[str]:
        """Messages chromium logged since the last call about something the CSP blocked."""
        entries = self.driver.get_log("browser")
        return [e["message"] for e in entries if "Content Security Policy" in e["message"]]

    def quit(self) -> None:
        self.driver.quit()


def _is_stale(element: Any) -> bool:
    """True once `element` is gone from the page (the next page replaced its document)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.tag_name  # noqa: B018 (touching it is the check)
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        # Caught mid-navigation, chromedriver can report the same thing as an inspector
        # error (seen with chromium 156 in CI): the node's document is no longer the page's.
        if "does not belong to the document" in str(exc.msg):
            return True
        raise
    return False


@pytest.fixture
def browser_settings(settings: dict[str, Any]) -> dict[str, Any]:
    require_browser()
    return {**settings, "FLUXKART_API_TOKEN": TOKEN, "FLUXKART_SECRET_KEY": SECRET_KEY}


@pytest.fixture
def service(browser_settings: dict[str, Any], tmp_path: Path) -> Iterator[Gunicorn]:
    running = start_service(browser_settings, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def browser(service: Gunicorn, backend: str, tmp_path: Path) -> Iterator[Browser]:
    started = Browser(service.url, tmp_path / "profile", SCREENSHOTS / backend)
    yield started
    started.quit()


def place_orders(service: Gunicorn) -> None:
    for email, phone in ORDERS:
        response = requests.post(
            service.url + "/identify",
            json={"email": email, "phoneNumber": phone},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text


def search(browser: Browser, kind: str, value: str) -> None:
    browser.get("/console")
    browser.find(f"#kind-{kind}").click()
    browser.find("#identifier").send_keys(value)
    browser.submit("form.card button[type=submit]")


def edges(browser: Browser, kind: str) -> set[tuple[str, str]]:
    return {
        (edge.get_attribute("data-source"), edge.get_attribute("data-target"))
        for edge in browser.find_all(f"svg.graph path.edge-{kind}")
    }


# --------------------------------------------------------------------------
# The journey
# --------------------------------------------------------------------------


def test_console_journey(
    browser: Browser, service: Gunicorn, browser_settings: dict[str, Any], backend: str
) -> None:
    from selenium.webdriver.common.keys import Keys

    place_orders(service)

    # Signed out, the console sends the browser to the sign-in form.
    browser.get("/console/customers/1")
    assert browser.path() == "/console/sign-in"
    assert browser.find("h1").text == "Sign in"
    browser.shoot("01-sign-in")

    # A wrong token is refused and says so.
    browser.find("#token").send_keys("not-the-token")
    browser.submit("form.card button[type=submit]")
    assert "not this service's API token" in browser.text()
    assert browser.find("#token").get_attribute("aria-invalid") == "true"
    browser.shoot("02-wrong-token")

    # The right token, by keyboard alone: Tab order is skip link, home link, token, Sign in.
    browser.get("/console/sign-in")
    body = browser.find("body")
    body.send_keys(Keys.TAB)
    assert browser.driver.switch_to.active_element.text == "Skip to content"
    focus_order = []
    for _ in range(3):
        browser.driver.switch_to.active_element.send_keys(Keys.TAB)
        active = browser.driver.switch_to.active_element
        focus_order.append(active.get_attribute("id") or active.text)
    assert focus_order == ["FluxKart support console", "token", "Sign in"]
    browser.shoot("02b-keyboard-focus-on-sign-in")  # the focus ring is visible
    browser.find("#token").send_keys(TOKEN)
    old = browser.find("html")
    browser.find("#token").send_keys(Keys.ENTER)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser.driver, 20).until(lambda d: _is_stale(old))
    assert browser.path() == "/console"
    assert browser.find("h1").text == "Find a customer"
    browser.shoot("03-search")

    # Search by email (any case: it is normalized): the customer's page, by primary id.
    search(browser, "email", "Dana@Example.COM")
    assert browser.path() == "/console/customers/1"
    browser.shoot("04-customer-by-email")

    # Every live row, primary first, with the masks.
    rows = browser.find_all("#rows tbody tr")
    assert [row.get_attribute("data-id") for row in rows] == ["1", "2", "3", "4"]
    cells = [[cell.text for cell in row.find_elements("css selector", "th, td")] for row in rows]
    assert [c[2] for c in cells] == ["primary", "secondary", "secondary", "secondary"]
    assert [c[3] for c in cells] == ["—", "1", "1", "1"]
    assert [c[4] for c in cells] == [
        "d***@example.com",
        "l***@example.org",
        "d***@example.net",
        "l***@example.org",
    ]
    assert [c[5] for c in cells] == ["+91 ******3210", "+1 ******0123", "+91 ******3210", "+44 ******0123"]
    page = browser.source()
    assert not [value for value in IDENTIFIERS if value in page]

    # The graph: a node per row, the primary marked, each kind of edge as worked out above.
    nodes = browser.find_all("svg.graph g.node")
    assert sorted(node.get_attribute("data-id") for node in nodes) == ["1", "2", "3", "4"]
    assert [node.get_attribute("data-id") for node in browser.find_all("svg.graph g.node-primary")] == ["1"]
    assert edges(browser, "link") == LINK_EDGES
    assert edges(browser, "email") == EMAIL_EDGES
    assert edges(browser, "phone") == PHONE_EDGES
    # ...and the same edges in words.
    words = [item.text for item in browser.find_all("#links li")]
    assert sorted(words) == sorted(
        [f"Row {a} is linked to row {b}" for a, b in LINK_EDGES]
        + [f"Rows {a} and {b} share an email" for a, b in EMAIL_EDGES]
        + [f"Rows {a} and {b} share a phone number" for a, b in PHONE_EDGES]
    )
    # Headings in order: one h1, h2s under it, the h3 under an h2.
    levels = [int(h.tag_name[1]) for h in browser.find_all("h1, h2, h3, h4")]
    assert levels[0] == 1 and all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False))

    # History, oldest first: created 1, created 2, the merge, the two links.
    assert [event.get_attribute("data-kind") for event in browser.find_all("#history li")] == HISTORY_KINDS
    browser.shoot("05-customer-graph-history")
    if os.environ.get("FLUXKART_DOCS_SCREENSHOTS") and backend == "sqlite":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(
            SCREENSHOTS / backend / "05-customer-graph-history.png", DOCS_SCREENSHOTS / "console-customer.png"
        )

    # By phone number (formatted as a person would type it) and by a secondary's contact id.
    search(browser, "phone", "+44 7700 900123")
    assert browser.path() == "/console/customers/1"
    search(browser, "id", "3")
    assert browser.path() == "/console/customers/1"
    browser.shoot("06-customer-by-contact-id")

    # Reveal: the full values, and a log line with the request id and no identifier.
    browser.submit("#reveal")
    page = browser.source()
    assert all(value in page for value in IDENTIFIERS)
    assert "shown in full" in browser.find("#revealed").text
    browser.shoot("07-revealed")
    reveal_lines = [line for line in service.logs().splitlines() if '"console_reveal"' in line]
    assert len(reveal_lines) == 1
    assert re.search(r'"request_id": "[0-9a-f]{32}"', reveal_lines[0])
    assert '"customerId": 1' in reveal_lines[0]

    # Merge protection's pages, from the navigation bar (no script, no inline style either).
    for path, heading in [
        ("/console/refused", "Refused links"),
        ("/console/past-limit", "Customers past the limit"),
        ("/console/blocked", "Blocked values"),
    ]:
        browser.submit(f'nav a[href="{path}"]')
        assert browser.path() == path
        assert browser.find("h1").text == heading
    assert len(browser.find_all("#blocked tbody tr")) == 6  # the shipped defaults
    browser.shoot("07b-blocked-values")
    # What blocking the customer's shared phone number would split: customer 1 (two rows carry it).
    browser.find("#kind-phone").click()
    browser.find("#form-value").click()
    browser.find("#text").send_keys("+91 98765 43210")
    browser.submit("#preview-block")
    assert [row.get_attribute("data-id") for row in browser.find_all("#joined tbody tr")] == ["1"]
    browser.shoot("07c-block-preview")

    # Erasure: the preview (the customer and the dry run's counts), then the confirmation.
    browser.get("/console/customers/1")
    browser.find("#erase-preview").click()
    assert browser.path() == "/console/customers/1/erase"
    assert browser.find("#preview-contacts").text == "4"
    assert browser.find("#preview-primary").text == "1"  # the customer, by name and counts ...
    assert browser.find_all("#preview-ids") == []  # ... not a list of its ids
    assert browser.find("#preview-history").text == str(len(HISTORY_KINDS))
    browser.shoot("08-erasure-preview")
    if os.environ.get("FLUXKART_DOCS_SCREENSHOTS") and backend == "sqlite":
        shutil.copy(
            SCREENSHOTS / backend / "08-erasure-preview.png", DOCS_SCREENSHOTS / "console-erasure-preview.png"
        )
    assert len(read_contacts(browser_settings)) == 4  # the preview changed nothing
    browser.submit("#confirm-erase")
    assert "erased" in browser.find("h1").text
    browser.shoot("09-erased")
    assert read_contacts(browser_settings) == []

    # The customer is gone for the console too.
    search(browser, "email", "dana@example.com")
    assert "no customer has this email" in browser.text().lower()
    browser.shoot("10-not-found-after-erasure")

    # Sign out: back to the sign-in form, and the customer pages are closed again.
    browser.submit("header form button")
    assert browser.path() == "/console/sign-in"
    assert "You are signed out" in browser.text()
    browser.shoot("11-signed-out")
    browser.get("/console/customers/1")
    assert browser.path() == "/console/sign-in"

    # Nothing on any page needed what the CSP forbids (inline style, script, other origins).
    assert browser.csp_violations() == []

    # No identifier in any URL the browser visited, in its history, or in the service's log.
    browser.quit()
    visited = browser.urls + browser.history_urls()
    assert visited and not [
        url for url in visited if any(value.lower() in url.lower() for value in IDENTIFIERS)
    ]
    logs = service.logs().lower()
    leaked = [value for value in IDENTIFIERS if value.lower() in logs or value.lstrip("+") in logs]
    assert not leaked


def test_console_refused_without_a_token(
    browser_settings: dict[str, Any], backend: str, tmp_path: Path
) -> None:
    service = start_service(browser_settings, tmp_path, FLUXKART_API_TOKEN="")
    browser = Browser(service.url, tmp_path / "profile", SCREENSHOTS / backend)
    try:
        browser.get("/console")
        assert browser.find("h1").text == "The console is off"
        assert "FLUXKART_API_TOKEN" in browser.text()
        browser.shoot("00-refused-without-token")
    finally:
        browser.quit()
        service.stop()
