"""The page's Models section in a real browser (Debian's chromium through playwright) against the real
daemon: upload a signed package, see a tampered one refused, roll back, and read the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Browser, expect

from recyclex_edge.daemon import Daemon
from recyclex_edge.registry.store import FACTORY
from tests.conftest import API_ADMIN_TOKEN, _api_token_overrides
from tests.registry.support import keypair, package_file
from tests.test_daemon import bin_config, photo_folder, run_daemon  # noqa: F401
from tests.test_page_browser import ARTIFACTS, browser, open_page  # noqa: F401


async def test_models_are_uploaded_rolled_back_and_audited_from_the_page(
    tmp_path: Path,
    browser: Browser,  # noqa: F811
    run_daemon: Any,  # noqa: F811
) -> None:
    key, pub = keypair(tmp_path / "keys")
    good = package_file(tmp_path, "7.2.0", key)
    tampered = tmp_path / "tampered.rxm"
    data = bytearray(good.read_bytes())
    data[5000] ^= 0x01
    tampered.write_bytes(bytes(data))
    photos = photo_folder(tmp_path, ["metal", "glass"])
    config = bin_config(
        tmp_path, photos, "http.auth.enabled=true", *_api_token_overrides(), f'model.trusted_keys=["{pub}"]'
    )
    daemon: Daemon = await run_daemon(config)
    errors: list[str] = []
    page = await open_page(browser, config, errors)
    await expect(page.locator("#models-status")).to_contain_text("An admin token shows")
    await page.locator("#token").fill(API_ADMIN_TOKEN)
    await page.locator("#token-form button[type=submit]").click()
    await expect(page.locator("#models-status")).to_contain_text(f"active {FACTORY}")
    await expect(page.locator("#model-audit li")).to_have_text("no model operation yet")
    result = page.locator("#model-result")

    await page.locator("#model-file").set_input_files(str(tampered))
    await page.locator("#model-upload button[type=submit]").click()
    await expect(result).to_have_attribute("data-outcome", "error")
    await expect(result).to_contain_text("changed after signing")

    await page.locator("#model-file").set_input_files(str(good))
    await page.locator("#model-upload button[type=submit]").click()
    await expect(result).to_have_attribute("data-outcome", "ok")
    await expect(page.locator('#models tr[data-version="7.2.0"] td').nth(5)).to_have_text("active")
    await expect(page.locator("#models-status")).to_contain_text("watching 7.2.0")
    assert daemon.registry is not None and daemon.registry.store.state().active == "7.2.0"

    await page.locator("#model-rollback").click()
    await expect(result).to_contain_text(f"rolled back from 7.2.0 to {FACTORY}")
    await expect(page.locator(f'#models tr[data-version="{FACTORY}"] td').nth(5)).to_have_text("active")
    audit = page.locator("#model-audit li")
    await expect(audit).to_have_count(3)
    await expect(audit.first).to_contain_text("http:token:operator rollback")
    await expect(audit.last).to_contain_text("✗")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.locator("#models-section").screenshot(path=str(ARTIFACTS / "technician-page-models.png"))
    assert errors == [], errors
