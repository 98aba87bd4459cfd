"""The server's challenger: the registry's ``challenger`` alias, followed beside the champion.

Shadow scoring (``serving.shadow``) and the canary both need the version that would serve next, loaded
and checked in the serving process before any request reaches it. ``Challenger`` gives them that with the
champion's own machinery: a second ``reload.ModelManager`` over a ``RegistryModelSource`` for the
``challenger`` alias, so a challenger version is loaded in a worker thread, warmed up and checked
(``reload.warm_up_and_check``) exactly like a champion, and hot-swapped by one reference assignment when
the alias moves. Each process of ``serve --workers N`` follows it on its own, like the champion.

Differences from the champion, and why:

* **Absent alias = no challenger.** When the alias is deleted (``registry.move_champion`` deletes it when
  the challenger is promoted) or never set, ``current()`` becomes None at the next poll: a model kept
  after its alias went would be shadow-scored or canaried while nobody asked for it.
* **Only a registry-following server has one.** A server of a bundle folder or of a pinned
  ``models:/NAME/VERSION`` has no alias to follow: ``current()`` is always None.
* **A challenger that fails to load is not an error of the server**: the failure is kept in
  ``status()["last_reload_error"]`` and the champion serves on, as for a bad champion version.

Readers call ``current()`` (a reference read, safe from any thread) each time they need the model, never
keep it: the next poll may swap or drop it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from visionloop.contracts import CHALLENGER
from visionloop.serving.reload import ModelManager
from visionloop.serving.sources import ModelSource, RegistryModelSource

if TYPE_CHECKING:
    from visionloop.models.bundle import ServableModel

log = logging.getLogger(__name__)


class _RememberingSource:
    """A source that remembers whether its last answer was "no version" (the alias is absent)."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.absent = False

    def __repr__(self) -> str:
        return repr(self.source)

    def current_version(self) -> str | None:
        version = self.source.current_version()
        self.absent = version is None
        return version

    def load(self, version: str) -> ServableModel:
        return self.source.load(version)


class _AliasManager(ModelManager):
    """A ``ModelManager`` that also lets go of its model when the alias it follows is gone."""

    def __init__(self, source: _RememberingSource, *, poll_seconds: float, max_batch: int) -> None:
        super().__init__(source, poll_seconds=poll_seconds, max_batch=max_batch)
        self.remembering = source

    async def poll_once(self) -> bool:
        swapped = await super().poll_once()
        if not swapped and self.remembering.absent and self._model is not None:
            log.info("the %s alias is gone: no challenger (was version %s)", CHALLENGER, self._model.version)
            self._model = None
            self.loaded_at = None
        return swapped


class Challenger:
    """The challenger version this server holds, or none (``current()``); ``run`` follows the alias."""

    def __init__(self, source: ModelSource | None, *, poll_seconds: float, max_batch: int) -> None:
        self.manager: ModelManager | None = None
        if source is not None:
            self.manager = _AliasManager(_RememberingSource(source), poll_seconds=poll_seconds, max_batch=max_batch)

    def current(self) -> ServableModel | None:
        """The challenger loaded and checked now, or None (no alias, not loaded yet, or not following one)."""
        return self.manager.current() if self.manager is not None else None

    async def run(self) -> None:
        """Follow the alias until cancelled (returns at once when there is none to follow)."""
        if self.manager is None:
            return
        await self.manager.run()

    async def poll_once(self) -> bool:
        """Check the alias once (tests and ``run``); True when a new challenger was swapped in."""
        return False if self.manager is None else await self.manager.poll_once()

    def status(self) -> dict[str, Any]:
        """The challenger's loading state, shaped like ``ModelManager.status`` (``followed``: has an alias)."""
        if self.manager is None:
            return {"followed": False, "model_loaded": False, "model_version": None}
        return {"followed": True, **self.manager.status()}


def challenger_source(champion_source: ModelSource) -> ModelSource | None:
    """The source of the challenger beside ``champion_source``: the same registered model's ``challenger``
    alias when the champion comes from the registry, else None (a bundle folder, a pinned version)."""
    if isinstance(champion_source, RegistryModelSource):
        return RegistryModelSource(champion_source.settings, CHALLENGER)
    return None

