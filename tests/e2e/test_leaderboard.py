"""The leaderboard page in a real browser: sortable table, filters, both plots, other teams see nothing."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import Stack
from tests.e2e.test_dashboard import VIEWPORT, _image_width, _log_in
from tests.integration.conftest import model_description
from tests.integration.test_api_leaderboard import store_cell

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_leaderboard_page_sorts_filters_and_draws(stack: Stack, browser: Any, session_factory: Any) -> None:
    description = model_description("org/lb-e2e")
    team = stack.team_ids["vision"]
    store_cell(session_factory, team, description, None, 0.0, "topk", "magnitude", [2.0, 2.1, 2.0, 2.2])
    for target, base in ((0.3, 2.5), (0.5, 3.0)):
        store_cell(session_factory, team, description, "uniform", target, "topk", "magnitude", [base] * 4)
        store_cell(session_factory, team, description, "acttail", target, "topk", "magnitude",
                   [base + 0.3, base + 0.2, base + 0.4, base + 0.3])  # fmt: skip
        store_cell(session_factory, team, description, "uniform", target, "topk", "wina",
                   [base - 0.1, base - 0.2, base - 0.1, base])  # fmt: skip
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{stack.base_url}/ui/login")
        _log_in(page, stack, "vision")
        page.click("nav >> text=Leaderboard")
        rows = page.locator("table#leaderboard tbody tr")
        expect(rows).to_have_count(7)  # dense + 3 cells at each of 2 targets
        page.click("table#leaderboard th:has-text('perplexity')")
        expect(page.locator("table#leaderboard th:has-text('perplexity')")).to_have_attribute("aria-sort", "ascending")
        expect(rows.first).to_have_attribute("data-method", "dense")
        page.click("table#leaderboard th:has-text('perplexity')")  # descending: acttail at 50% is the worst
        first = rows.first.locator("td")
        expect(first.nth(2)).to_have_text("acttail")
        expect(first.nth(1)).to_have_text("50%")
        expect(first.nth(6)).to_have_text("+35.0")  # exp(0.3) - 1 against uniform TopK |x|
        assert _image_width(page, "img.leaderboard-sweep") > 0
        assert _image_width(page, "img.leaderboard-scaling >> nth=0") > 0
        page.select_option("#lb-target", "0.3")
        page.click("#leaderboard-filter button[type=submit]")
        expect(rows).to_have_count(4)  # dense stays for reference
        expect(page.locator("img.leaderboard-scaling")).to_have_count(1)
        page.goto(f"{stack.base_url}/ui/leaderboard?target=2")
        expect(page.locator("main")).to_contain_text("target must be a number in [0, 1)")
    finally:
        page.close()
    other = browser.new_page(viewport=VIEWPORT)
    try:
        other.goto(f"{stack.base_url}/ui/login")
        _log_in(other, stack, "speech")
        other.goto(f"{stack.base_url}/ui/leaderboard")
        expect(other.locator("table#leaderboard")).to_have_count(0)
        expect(other.locator("p.empty")).to_contain_text("No leaderboard rows")
    finally:
        other.close()
