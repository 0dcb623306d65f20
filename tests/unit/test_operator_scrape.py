"""The operator reads a trainer's /metrics with a bound in size and time (a real local HTTP server)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from finetune_contract import metrics as m
from finetune_operator.progress import MAX_SCRAPE_BYTES, scrape

GOOD = f"{m.STEP} 7\n{m.TOTAL_STEPS} 10\n"


async def _scrape_from(body: str, delay: float = 0.0, timeout: float = 2.0) -> object:
    async def handler(_: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text=body)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            return await scrape(session, "127.0.0.1", port, timeout)
    finally:
        await runner.cleanup()


def test_a_normal_page_is_read() -> None:
    sample = asyncio.run(_scrape_from(GOOD))
    assert sample is not None
    assert getattr(sample, "step", None) == 7


def test_a_page_over_the_size_cap_is_dropped_not_read_whole() -> None:
    padding = "# " + "x" * 1000 + "\n"
    assert asyncio.run(_scrape_from(GOOD + padding * (MAX_SCRAPE_BYTES // len(padding) + 2))) is None


def test_a_page_that_never_comes_is_given_up_on() -> None:
    assert asyncio.run(_scrape_from(GOOD, delay=5, timeout=0.5)) is None
