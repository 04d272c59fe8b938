"""The technician page in a real browser (Debian's chromium, headless, driven by playwright) against a
whole bin on replayed items: live events, MQTT health following a real broker, controls moving mock pins.

No browser is ever downloaded: playwright only drives /usr/bin/chromium (`tools/test` installs it).
Every wait is for a condition on the page or the bin, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from recyclex_edge.config import Config
from recyclex_edge.daemon import Daemon
from tests.conftest import API_ADMIN_TOKEN, API_PREDICT_TOKEN, _api_token_overrides
from tests.mqtt.support import Mosquitto
from tests.test_daemon import (  # the same replayed bin as the daemon tests
    ANGLES,
    SERVO_PIN,
    bin_config,
    broker_settings,
    duty,
    photo_folder,
    run_daemon,  # noqa: F401  (a fixture)
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WAIT_MS = 30_000  # generous for a loaded 2-core machine; every wait still ends, and fails
expect.set_options(timeout=WAIT_MS)  # expect's own default is 5 s


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tools/test installs it)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser: Browser, config: Config, errors: list[str]) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Refusals the page expects (401 without a token ...) are logged by the browser, not errors of the page.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    await page.goto(f"http://127.0.0.1:{config.http.port}/")
    return page


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_MS / 1000) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}") from None


def servo_duties(daemon: Daemon) -> list[float]:
    return [round(float(state.state), 4) for state in daemon.pin_factory.pin(SERVO_PIN).states]


def component(page: Page, name: str) -> Any:
    return page.locator(f'#components li[data-component="{name}"]')


async def test_the_page_follows_the_bin_live_and_its_controls_move_it(
    tmp_path: Path,
    broker: Mosquitto,
    browser: Browser,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["glass", "paper", "metal", "cardboard"])
    config = bin_config(
        tmp_path,
        photos,
        *broker_settings(broker.port, "bin-page"),
        "device.name=Hall 3 east",
    )
    daemon: Daemon = await run_daemon(config)
    errors: list[str] = []
    page = await open_page(browser, config, errors)

    await expect(page.locator("#device")).to_contain_text("bin-page")
    await expect(page.locator("#auth-status")).to_have_attribute("data-kind", "warn")
    await expect(page.locator("#auth-banner")).to_contain_text("Authentication is OFF")
    assert daemon.classifier is not None
    await expect(page.locator("#model")).to_contain_text(daemon.classifier.card.name)
    await expect(component(page, "mqtt")).to_have_attribute("data-status", "ok")
    await expect(page.locator("#feed")).to_have_text("(live)")

    # The event list grows while the page is open, with the bin's own events, newest first.
    rows = page.locator("#events li")
    shown_at_start = await rows.count()
    await page.wait_for_function(
        "n => document.querySelectorAll('#events li').length >= n", arg=shown_at_start + 2, timeout=60_000
    )
    await expect(rows.first.locator("img.thumb")).to_have_attribute("src", re.compile("^blob:"))
    shown_ids = [await row.get_attribute("data-event-id") for row in await rows.all()]
    known = {event["id"]: event for event in daemon.history.events()}  # type: ignore[attr-defined]
    assert shown_ids and set(shown_ids) <= set(known), "every row is one of the bin's events"
    assert shown_ids == sorted(shown_ids, reverse=True), "newest first"
    newest = known[shown_ids[0]]
    first_row = rows.first
    await expect(first_row.locator(".event-class")).to_contain_text(newest["class"])
    await expect(first_row.locator(".event-decision")).to_contain_text(newest["action"])
    await expect(page.locator("#camera")).to_have_attribute("src", re.compile("^blob:"))
    await expect(page.locator("#items-summary")).to_contain_text(re.compile(r"[1-9]\d* in the last hour"))

    # The broker goes away: the MQTT component turns red; it comes back: green again.
    broker.stop()
    await expect(component(page, "mqtt")).to_have_attribute("data-status", "failing")
    await expect(component(page, "mqtt")).to_have_class(re.compile(r"\bfailing\b"))
    await expect(page.locator("#overall")).to_have_attribute("data-status", "degraded")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "technician-page-mqtt-down.png"))
    broker.start()
    await expect(component(page, "mqtt")).to_have_attribute("data-status", "ok")

    # An actuator test clicked on the page moves the diverter to that bin's angle.
    plastic = duty(ANGLES["plastic"])
    before = servo_duties(daemon).count(plastic)
    await page.locator('#actuators button:text-is("plastic")').click()
    await expect(page.locator("#command-result")).to_have_attribute("data-outcome", "ok")
    await expect(page.locator("#command-result")).to_contain_text("plastic → bin plastic: sorted")
    await until(lambda: servo_duties(daemon).count(plastic) > before, "the servo to move to plastic")

    # And the mode buttons switch the pipeline's mode.
    await page.locator('#modes button[data-mode="maintenance"]').click()
    await expect(page.locator("#mode")).to_have_text("maintenance")
    assert daemon.pipeline is not None and daemon.pipeline.mode.value == "maintenance"

    await page.screenshot(path=str(ARTIFACTS / "technician-page.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.screenshot(path=str(ARTIFACTS / "technician-page-phone.png"), full_page=True)
    assert errors == [], errors


async def test_the_page_says_when_a_token_is_missing_or_refused_and_works_with_an_admin_one(
    tmp_path: Path,
    browser: Browser,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["metal", "glass"])
    # Authentication on, rate limits on: the page's polling must fit in the default budget.
    config = bin_config(tmp_path, photos, "http.auth.enabled=true", *_api_token_overrides())
    daemon: Daemon = await run_daemon(config)
    errors: list[str] = []
    page = await open_page(browser, config, errors)
    status = page.locator("#auth-status")
    actuator = page.locator('#actuators button:text-is("metal")')

    await expect(status).to_contain_text("No token")
    await expect(actuator).to_be_disabled()
    # MQTT is off in this bin: said at a glance, in the list and in the overall line, not left out.
    for name in ("mqtt", "outbox", "fill_levels"):
        await expect(component(page, name)).to_have_attribute("data-status", "disabled")
        await expect(component(page, name)).to_have_class(re.compile(r"\bdisabled\b"))
    await expect(component(page, "mqtt").locator(".component-detail")).to_contain_text("publishes no events")
    await expect(page.locator("#overall-status")).to_contain_text("mqtt disabled")
    await expect(page.locator("#camera-note")).to_contain_text("Paste a valid token")
    await expect(page.locator("#auth-banner")).to_contain_text("Read-only view")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "technician-page-no-token.png"), full_page=True)

    async def use_token(value: str) -> None:
        await page.locator("#token").fill(value)
        await page.locator("#token-form button[type=submit]").click()

    await use_token("not-a-token-this-bin-knows")
    await expect(status).to_contain_text("Token refused: the token is not valid")
    await expect(status).to_have_attribute("data-kind", "bad")
    await expect(page.locator("#auth-banner")).to_contain_text("Token refused")
    await expect(actuator).to_be_disabled()

    await use_token(API_PREDICT_TOKEN)
    await expect(status).to_contain_text("lacks the admin scope")
    await expect(actuator).to_be_disabled()
    await expect(page.locator("#camera")).to_have_attribute("src", re.compile("^blob:"))

    await use_token(API_ADMIN_TOKEN)
    await expect(status).to_contain_text("Admin token accepted (token:operator)")
    await expect(page.locator("#auth-banner")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('recyclex.adminToken')") == API_ADMIN_TOKEN
    metal = duty(ANGLES["metal"])
    before = servo_duties(daemon).count(metal)
    await actuator.click()
    await expect(page.locator("#command-result")).to_have_attribute("data-outcome", "ok")
    await until(lambda: servo_duties(daemon).count(metal) > before, "the servo to move to metal")

    # Without the WebSocket (a browser cannot send it a token) the list is refreshed by polling.
    await expect(page.locator("#feed")).to_contain_text("refreshed every")
    await expect(page.locator("#events li").first).to_be_visible(timeout=60_000)
    await expect(page.locator("#events li img.thumb").first).to_have_attribute("src", re.compile("^blob:"))

    await page.locator("#forget-token").click()
    await expect(status).to_contain_text("No token")
    await expect(actuator).to_be_disabled()
    assert errors == [], errors
