"""Entities: the keys features hang on, one per catalog entity (every join key is a string)."""

from feast import Entity, ValueType

from featrec.core.features import catalog


def _entity(entity: catalog.Entity) -> Entity:
    return Entity(
        name=entity.name,
        join_keys=[entity.join_key],
        value_type=ValueType.STRING,
        description=entity.description,
    )


session = _entity(catalog.SESSION)
user = _entity(catalog.USER)
item = _entity(catalog.ITEM)

#: Every entity by catalog name, including any that a new catalog view brings along.
ENTITIES = {e.name: e for e in (session, user, item)}
for _view in catalog.VIEWS.values():
    if _view.entity.name not in ENTITIES:
        ENTITIES[_view.entity.name] = _entity(_view.entity)
        # Feast collects only module attributes: publish the new entity under its name.
        globals()[_view.entity.name] = ENTITIES[_view.entity.name]
