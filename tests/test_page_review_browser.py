"""The Review view in a real browser (Debian's chromium, headless, playwright): a bin replaying photos
from a site none of the training data comes from keeps every item; a technician labels them with keys
and clicks, skips, undoes and relabels, and the labels land in the bin's capture store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, expect

from recyclex_edge.daemon import Daemon
from tests.conftest import API_ADMIN_TOKEN, _api_token_overrides
from tests.fieldlearning.test_adaptation import SITE
from tests.test_daemon import bin_config, run_daemon  # noqa: F401
from tests.test_page_browser import ARTIFACTS, browser, open_page, until  # noqa: F401

CLASSES = ("glass", "metal", "plastic")


def site_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, label in enumerate(CLASSES * 2):
        photo = sorted((SITE / label).glob("*.jpg"))[index]
        (folder / f"{index:02d}-{label}-{photo.name}").symlink_to(photo)
    return folder


async def test_label_with_keys_skip_undo_and_relabel(
    tmp_path: Path,
    browser: Browser,  # noqa: F811
    run_daemon: Any,  # noqa: F811
) -> None:
    config = bin_config(
        tmp_path,
        site_folder(tmp_path),
        "http.auth.enabled=true",
        *_api_token_overrides(),
        "capture.sample_rate=1",
        "capture.adaptation.refit_delay_s=0.5",
    )
    daemon: Daemon = await run_daemon(config)
    assert daemon.site is not None
    store = daemon.site.store
    assert store is not None
    await until(lambda: len(store.items(labelled=False)) >= 4, "four items kept for review", 120)

    errors: list[str] = []
    page = await open_page(browser, config, errors)
    await expect(page.locator("#review-note")).to_be_visible()
    await page.locator("#token").fill(API_ADMIN_TOKEN)
    await page.locator("#token-form button[type=submit]").click()
    await expect(page.locator("#review-note")).to_be_hidden()
    rows = page.locator("#review-items li")
    await expect(rows.nth(3)).to_be_visible()
    await expect(page.locator("#review-summary")).to_contain_text("to review")
    # Newest first, the first selected; its guess and confidence shown, its photo loaded.
    ids = await rows.evaluate_all("rows => rows.map(r => r.dataset.itemId)")
    assert ids == sorted(ids, reverse=True)
    selected = await page.locator("#review-items li.selected").get_attribute("data-item-id")
    assert selected is not None and selected in ids[:2], "the newest is selected first"
    first, second, third = ids[ids.index(selected) : ids.index(selected) + 3]

    def row(item_id: str):  # by id: the bin keeps replaying, newer items arrive on top meanwhile
        return page.locator(f'#review-items li[data-item-id="{item_id}"]')

    await expect(row(first)).to_have_class("selected")
    await expect(row(first).locator(".review-guess")).to_contain_text(" %")
    await expect(row(first).locator("img")).to_have_attribute("src", re.compile("^blob:"))

    def label_of(item_id: str) -> str | None:
        item = store.get(item_id)
        assert item is not None
        return item.label

    result = page.locator("#review-result")
    # Key 2 labels the selected item with the model's second class (glass) and moves on.
    await page.keyboard.press("2")
    await expect(result).to_contain_text("labelled glass")
    assert label_of(first) == "glass"
    await expect(row(second)).to_have_class("selected")
    # x skips the second; 0 says the third is no item / not waste.
    await page.keyboard.press("x")
    await expect(row(third)).to_have_class("selected")
    await page.keyboard.press("0")
    await expect(result).to_contain_text("labelled none")
    assert label_of(third) == "none" and label_of(second) is None, "skipped, not labelled"
    # u takes the last label back.
    await page.keyboard.press("u")
    await expect(result).to_contain_text("label taken back")
    assert label_of(third) is None
    # A click relabels the first item.
    await row(first).locator('button[data-label="metal"]').click()
    await expect(result).to_contain_text("labelled metal")
    assert label_of(first) == "metal"
    item = store.get(first)
    assert item is not None and item.labelled_by == "token:operator"
    await expect(page.locator('#review-counts li[data-label="metal"]')).to_have_attribute("data-count", "1")

    # The Labelled filter shows what was labelled, with the chosen label marked.
    await page.locator('#review-section button[data-filter="true"]').click()
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator("button.chosen")).to_have_attribute("data-label", "metal")

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "technician-page-review.png"), full_page=True)
    assert not errors, errors
