"""The shop page in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright; never ``playwright install``), against the real system on the embedded default:
the Feast repo applied to a temp dir, item signals bootstrapped from generated history, both
dataflows tailing the collector log, and ``featrec serve`` in a subprocess.

It opens ``/shop``, clicks products and adds one to the cart, and checks that after each event
the rail shows an answer that includes it (the session version reached the event's time,
reasons from the session), that a forgotten user's events are refused on the page, and it
prints the click-to-updated-rail latencies the page measured (measured, not asserted). The
screenshots are saved under ``FEATREC_SHOP_SCREENSHOTS`` (default: the test's temp dir).
"""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from featrec.adapters.files.deny_list import FileDenyStore, deny_file
from featrec.jobs.storefront import Running, prepare, start, stop, wait_flowing, wait_ready
from featrec.settings import Settings
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_server import RedisServer, free_port

CHROMIUM = "/usr/bin/chromium"
SESSION_REASON = "often viewed with the items in this session"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Settings, Path]]:
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError(
            f"{CHROMIUM} is missing: `apt-get install -y chromium chromium-driver` "
            "(.ci/run installs it)"
        )
    root = tmp_path_factory.mktemp("shop")
    settings = Settings(
        home=root / ".featrec", repo=copy_feature_repo(root / "feature_repo"), online_store="sqlite"
    )
    prepare(settings, n_events=3000, train=False, echo=print)
    running = start(settings, port=free_port(), model="none", log=root / "processes.log")
    try:
        wait_ready(running, timeout_s=120)
        print(f"first event through the flow after {wait_flowing(running):.1f} s")
        yield running, settings, root
    finally:
        stop(running)
        print((root / "processes.log").read_text(errors="replace")[-3000:])


def _screens(root: Path) -> Path:
    out = Path(os.environ.get("FEATREC_SHOP_SCREENSHOTS", root / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _wait_latencies(page: Any, n: int) -> None:
    page.wait_for_function(f"window.featrecShop.latencies.length >= {n}", timeout=30_000)


def test_the_rail_follows_clicks_through_the_real_flow(
    shop: tuple[Running, Settings, Path],
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    running, settings, root = shop
    screens = _screens(root)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            traffic: list[str] = []  # printed when the test fails: what the page saw
            page.on("console", lambda m: traffic.append(f"console: {m.text}"))
            page.on(
                "response",
                lambda r: (
                    traffic.append(f"{r.request.method} {r.url} {r.status}")
                    if "/static/" not in r.url
                    else None
                ),
            )
            page.goto(running.url)
            page.wait_for_function("window.featrecShop.ready && window.featrecShop.lastAnswer")
            session = page.evaluate("window.featrecShop.session")
            assert session.startswith("web-")
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
            assert cookies["featrec_session"] == session
            anonymous = page.evaluate("window.featrecShop.lastAnswer")
            assert anonymous["session_version"] is None  # no event yet: popular items
            assert page.locator("#grid .card").count() >= 24

            # 1. a click on a product: through /events, the sessions flow, the store, the rail
            first = page.locator("#grid .card").nth(3)
            clicked = first.get_attribute("data-item")
            first.click()
            _wait_latencies(page, 1)
            answer = page.evaluate("window.featrecShop.lastAnswer")
            assert answer["session_version"] is not None and answer["degraded"] is False
            reasons = [r for item in answer["items"] for r in item["reasons"]]
            assert SESSION_REASON in reasons, reasons
            rail = page.locator("#rail-items li").all_inner_texts()
            assert rail and rail != [i["item_id"] for i in anonymous["items"]]
            page.wait_for_function(
                "document.querySelectorAll('#together .card').length > 0", timeout=10_000
            )

            # 2. a second product from "often viewed together", then add it to the cart
            second = page.locator("#together .card").first
            second.click()
            _wait_latencies(page, 2)
            page.locator("#add-to-cart").click()
            _wait_latencies(page, 3)
            after_cart = page.evaluate("window.featrecShop.lastAnswer")
            assert after_cart["session_version"] > answer["session_version"]
            assert page.locator("#cart-count").inner_text() == "1"
            # the page passes the list it shows back: the shown list is the rail
            shown = page.evaluate("window.featrecShop.shown")
            assert shown == [i["item_id"] for i in after_cart["items"]]

            # 3. more clicks from the rail itself, for the latency figures
            for n in range(4, 9):
                page.locator("#rail-items li").nth(n % 3).click()
                _wait_latencies(page, n)
            page.screenshot(path=str(screens / "shop.png"))
            latencies = page.evaluate("window.featrecShop.latencies")
            assert page.evaluate("window.featrecShop.events") == 8
            refused_before = page.evaluate("window.featrecShop.refused")
            assert refused_before == 0
            assert clicked is not None

            # 4. a forgotten user: the page's events are refused, and it says so
            FileDenyStore(deny_file(settings.event_log_dir)).add("gone-user", [])
            page.fill("#user", "gone-user")
            page.dispatch_event("#user", "change")
            # The server re-reads the deny-list at most every second: add to the cart until
            # a refusal comes back (an event accepted before that is counted below).
            for _ in range(20):
                page.locator("#add-to-cart").click()  # the product page of the last rail click
                try:
                    page.wait_for_function("window.featrecShop.refused >= 1", timeout=1500)
                    break
                except PlaywrightTimeout:
                    continue
            assert page.evaluate("window.featrecShop.refused") >= 1
            banner = page.locator("#banner")
            assert banner.is_visible() and "403" in banner.inner_text()
            assert "forgotten" in banner.inner_text()
            page.screenshot(path=str(screens / "shop-forgotten.png"))
            accepted = page.evaluate("window.featrecShop.events")
        except Exception:
            print("\n".join(traffic[-60:]))
            raise
        finally:
            browser.close()
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    print(
        f"\nclick-to-updated-rail latency over {len(ordered)} events: p50 {p50:.0f} ms, "
        f"max {ordered[-1]:.0f} ms (all: {[round(x) for x in latencies]}); screenshots in "
        f"{screens}"
    )
    metrics = httpx.get(running.url.removesuffix("/shop") + "/metrics").text
    assert 'featrec_shop_rail_seconds_count{kind="click"}' in metrics
    # the page's accepted events and the readiness probe; one refusal
    assert f"featrec_collector_accepted_total {accepted + 1}.0" in metrics
    assert 'featrec_collector_refused_total{reason="forgotten"} 1.0' in metrics


@pytest.fixture(scope="module")
def redis_shop(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Running, RedisServer, Path]]:
    root = tmp_path_factory.mktemp("redis-shop")
    server = RedisServer(root)
    server.start()
    settings = Settings(
        home=root / ".featrec",
        repo=copy_feature_repo(root / "feature_repo"),
        online_store="redis",
        redis_url=server.url,
    )
    try:
        prepare(settings, n_events=1000, train=False, echo=print)
        running = start(settings, port=free_port(), model="none", log=root / "processes.log")
        try:
            wait_ready(running, timeout_s=120)
            print(f"first event through the flow after {wait_flowing(running):.1f} s")
            yield running, server, root
        finally:
            stop(running)
    finally:
        server.stop()


@pytest.mark.redis
def test_with_redis_stopped_the_page_still_works_and_says_it_is_degraded(
    redis_shop: tuple[Running, RedisServer, Path],
) -> None:
    from playwright.sync_api import sync_playwright

    running, server, root = redis_shop
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(running.url)
            page.wait_for_function("window.featrecShop.ready && window.featrecShop.lastAnswer")
            page.locator("#grid .card").nth(2).click()  # through the Redis stream and the flow
            _wait_latencies(page, 1)
            assert page.evaluate("window.featrecShop.lastAnswer.degraded") is False
            assert not page.locator("#banner").is_visible()

            server.stop()
            page.locator("#add-to-cart").click()
            page.wait_for_function(
                "document.getElementById('banner').textContent.includes('Degraded')",
                timeout=30_000,
            )
            banner = page.locator("#banner").inner_text()
            assert "Event refused (503)" in banner and "event bus is unavailable" in banner
            assert page.evaluate("window.featrecShop.lastAnswer.degraded") is True
            assert page.locator("#rail-items li").count() > 0  # still an answer to show
            page.locator("#back").click()  # and the shop itself still works
            page.locator("#grid .card").first.click()
            assert page.locator("#product-name").inner_text()
            page.screenshot(path=str(_screens(root) / "shop-degraded.png"))
        finally:
            browser.close()
