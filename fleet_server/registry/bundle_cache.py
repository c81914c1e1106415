"""Published bundles read back from the artifact store, with a small LRU in front.

The fleet views need a model version's reference profile (drift), the predict endpoint its
model and manifest; both come from the same bytes the devices download. ``BundleCache`` reads
a bundle once (``edgefleet.bundle.read_bundle`` checks it again) and keeps the last
``maxsize`` in memory. ``latest`` names the newest version of a model that is not yanked.

It does not publish or change anything (``fleet_server.registry.models`` does).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import select

from edgefleet.bundle import Bundle, read_bundle
from edgefleet.errors import BundleError
from edgefleet.version import ModelVersion
from fleet_server.db import Database
from fleet_server.errors import NotFoundError, ServerError
from fleet_server.registry.artifacts import ArtifactError, ArtifactStore
from fleet_server.tables import ModelRow

DEFAULT_MAX_BUNDLES = 8


class BundleCache:
    def __init__(self, db: Database, artifacts: ArtifactStore, *, maxsize: int = DEFAULT_MAX_BUNDLES) -> None:
        self.db = db
        self.artifacts = artifacts
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._bundles: OrderedDict[tuple[str, str], Bundle] = OrderedDict()

    def published(self, name: str) -> list[str]:
        """Every version of ``name`` that is not yanked."""
        with self.db.session() as session:
            return list(session.scalars(select(ModelRow.version).where(ModelRow.name == name,
                                                                       ModelRow.yanked.is_(False))))

    def latest(self, name: str) -> str:
        """The newest version of ``name`` that is not yanked."""
        versions = self.published(name)
        if not versions:
            raise NotFoundError(f"model {name!r} has no published version that is not yanked",
                                fix="see `edgefleet models list`, or push one with `edgefleet models push`")
        return max(versions, key=ModelVersion.parse)

    def get(self, name: str, version: str) -> Bundle:
        key = (name, version)
        with self._lock:
            if key in self._bundles:
                self._bundles.move_to_end(key)
                return self._bundles[key]
        bundle = self._read(name, version)
        with self._lock:
            self._bundles[key] = bundle
            self._bundles.move_to_end(key)
            while len(self._bundles) > self.maxsize:
                self._bundles.popitem(last=False)
        return bundle

    def _read(self, name: str, version: str) -> Bundle:
        with self.db.session() as session:
            target = session.scalars(select(ModelRow.target_path).where(ModelRow.name == name,
                                                                        ModelRow.version == version)).first()
        if target is None:
            raise NotFoundError(f"model {name}@{version} is not in the registry", fix="see `edgefleet models list`")
        try:
            with self.artifacts.open(target) as handle:
                data = handle.read()
            return read_bundle(data)
        except (ArtifactError, BundleError, OSError) as exc:
            raise ServerError(f"the stored bundle of {name}@{version} cannot be read: {exc}",
                              fix="push the bundle again (identical bytes repair the store)") from exc
