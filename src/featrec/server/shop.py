"""``/shop``: the storefront page, its catalogue API and the page's latency reports.

The page is static HTML, CSS and JS shipped in the package (``featrec/server/static/shop``: no
build step, nothing loaded from another site). It talks to the same server:

- ``GET /shop/api/catalogue``: the products (:func:`featrec.app.shop.generated_products`);
- ``GET /shop/api/together/{item_id}``: "often viewed together" (co-visitation neighbours);
- ``POST /events`` (:mod:`featrec.server.collector`) for every view, click and add-to-cart;
- ``POST /recommend`` for the rail, passing the list it shows (``shown``: stability);
- ``POST /shop/api/latency``: the click-to-updated-rail time the page measured, observed in
  the ``featrec_shop_rail_seconds`` histogram.

A cookie (``featrec_session``) holds the session id; a user id is optional (typed on the page).
"""

from __future__ import annotations

from dataclasses import asdict
from importlib import resources
from typing import Annotated, Final

import anyio.to_thread
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, ConfigDict, Field

from featrec.app.serving.cache import RowCache
from featrec.app.shop import Product, generated_products, viewed_together

#: The page's files, inside the package.
STATIC: Final = resources.files("featrec.server") / "static" / "shop"


class ProductOut(BaseModel):
    item_id: str
    name: str
    category: str
    price: float


class Catalogue(BaseModel):
    source: str = Field(description="Where the products come from: `generated`.")
    products: list[ProductOut]


class Together(BaseModel):
    item_id: str
    items: list[str]
    degraded: bool = Field(description="The store could not be read: cached or no list.")


class RailLatency(BaseModel):
    """One measurement by the page: from an event sent to the rail showing it."""

    model_config = ConfigDict(extra="forbid")

    ms: float = Field(ge=0, le=600_000)
    kind: str = Field(default="click", pattern="^(view|click|cart)$")


def add_shop(app: FastAPI, cache: RowCache, registry: CollectorRegistry) -> None:
    """Serve the storefront on ``app`` (module docstring)."""
    rail = Histogram(
        "featrec_shop_rail_seconds",
        "Click-to-updated-rail latency as the shop page measured it (event sent to the rail "
        "showing a recommendation that includes it).",
        ["kind"],
        buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
        registry=registry,
    )
    products: list[Product] = generated_products()
    catalogue = Catalogue(source="generated", products=[ProductOut(**asdict(p)) for p in products])
    index = str(STATIC / "index.html")

    @app.get("/shop", include_in_schema=False)
    def shop_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"cache-control": "no-cache"})

    @app.get("/shop/", include_in_schema=False)
    def shop_slash() -> RedirectResponse:
        return RedirectResponse("/shop")

    @app.get("/shop/api/catalogue", response_model=Catalogue, tags=["shop"])
    def shop_catalogue() -> Catalogue:
        """The shop's products, most popular first."""
        return catalogue

    @app.get("/shop/api/together/{item_id}", response_model=Together, tags=["shop"])
    async def together(
        item_id: Annotated[str, PathParam(min_length=1, max_length=256)], k: int = 6
    ) -> Together:
        """Items often viewed together with ``item_id`` (co-visitation), heaviest first."""
        k = max(1, min(k, 20))
        ids, degraded = await anyio.to_thread.run_sync(viewed_together, cache, item_id, k)
        return Together(item_id=item_id, items=ids, degraded=degraded)

    @app.post("/shop/api/latency", status_code=204, tags=["shop"])
    def latency(body: RailLatency) -> Response:
        """Record one click-to-updated-rail time measured by the page."""
        rail.labels(body.kind).observe(body.ms / 1000.0)
        return Response(status_code=204)

    app.mount("/shop/static", StaticFiles(directory=str(STATIC)), name="shop-static")
