"""The storefront's catalogue and its "often viewed together" list.

The shop page (``/shop``, :mod:`featrec.server.shop`) shows a catalogue of products. By default
it is the generated shop of :mod:`featrec.core.events.generator` with :data:`SHOP` (the
catalogue ``featrec demo --web`` generates its traffic from, so the item signals and the page
name the same items), each product given a readable name from its category. "Often viewed
together" is the item's co-visitation neighbour list from the online store, read through the
recommender's item cache (bounded staleness, and the stale rows when the store is down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from featrec.app.serving import steps
from featrec.app.serving.cache import RowCache
from featrec.core.events.generator import GeneratorConfig, catalogue
from featrec.core.features.catalog import ITEM_NEIGHBOURS
from featrec.errors import StoreError

#: The generated shop: 600 products in 24 categories (small enough to browse).
SHOP: Final = GeneratorConfig(n_events=20_000, n_users=800, n_items=600, n_categories=24, seed=15)

_NOUNS: Final = (
    "Lamp", "Mug", "Backpack", "Sneaker", "Notebook", "Kettle", "Headphones", "Scarf",
    "Candle", "Plant pot", "Watch", "Blanket", "Jacket", "Teapot", "Speaker", "Wallet",
    "Chair", "Rug", "Bottle", "Pillow", "Sunglasses", "Umbrella", "Vase", "Towel",
)  # fmt: skip
_ADJECTIVES: Final = (
    "Oak", "Nordic", "Copper", "Linen", "Classic", "Tiny", "Bold", "Soft", "Retro",
    "Urban", "Alpine", "Coral",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Product:
    item_id: str
    name: str
    category: str
    price: float


def generated_products(config: GeneratorConfig = SHOP) -> list[Product]:
    """The generated catalogue, most popular first."""
    shop = catalogue(config)
    order = sorted(range(len(shop)), key=lambda i: -float(shop.popularity[i]))
    out = []
    for i in order:
        c = int(shop.category_index[i])
        name = f"{_ADJECTIVES[i % len(_ADJECTIVES)]} {_NOUNS[c % len(_NOUNS)]}"
        out.append(Product(shop.item_ids[i], name, shop.categories[i], shop.prices[i]))
    return out


def viewed_together(cache: RowCache, item_id: str, k: int) -> tuple[list[str], bool]:
    """The ``k`` heaviest co-visitation neighbours of ``item_id``, and whether the answer is
    degraded (the store could not be read: the cached list, however old, or none)."""
    try:
        found = cache.get({ITEM_NEIGHBOURS.name: [item_id]})
        degraded = False
    except StoreError:
        found = cache.get({ITEM_NEIGHBOURS.name: [item_id]}, offline=True)
        degraded = True
    values = steps.values_of(found[ITEM_NEIGHBOURS.name][0])
    ids = steps.strings(values.get("neighbour_ids")) if values else []
    return [i for i in ids if i != item_id][:k], degraded
