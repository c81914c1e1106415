"""The updater's seam to the TUF repository: look a target up, download it, errors as reason codes.

``TufClient`` is what the update path needs from TUF, and nothing more:

    target(path)          refresh the metadata (TUF client workflow 5.3-5.6) and return what the
                          signed targets metadata says of ``path`` (sha256, length), or None
    download(path, dest)  put the target's verified bytes at ``dest`` (reusing a verified copy)

``NgclientTuf`` is the real one: python-tuf's ``ngclient.Updater`` over our
``ResumingFetcher``, with the state directory's root.json as the trust anchor. Its failures
enter our code here, wrapped as ``TufClientError`` subclasses that carry the update reason code
(``edgefleet.events``), so the updater maps nothing from tuf itself. A ``TufClientFactory`` makes
a fresh client per attempt (ngclient's Updater refreshes once per instance); the updater takes
one, so unit tests feed an in-memory fake and need no HTTP server.

Not here: whether the assignment agrees with TUF (the updater compares), reading the bundle,
retry timing. tuf is imported only when a real client is built, so an agent without updates
never loads it.

    AgentError (agent.errors)
    └── TufClientError           reason: one of the codes below
        ├── TufMismatchError     downloaded bytes disagree with the signed hash/length (hash_mismatch)
        ├── TufRefusedError      metadata failed verification: expired, rolled back, badly signed (tuf_refused)
        └── TufDownloadError     network failure or timeout; retried later (download_failed)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.errors import AgentError
from agent.state import StateDir
from edgefleet import events

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient.updater import Updater as NgUpdater

    from agent.fetcher import ResumingFetcher


class TufClientError(AgentError):
    """TUF refused or could not deliver a target; ``reason`` is the update's reason code."""

    reason = events.TUF_REFUSED


class TufMismatchError(TufClientError):
    reason = events.HASH_MISMATCH


class TufRefusedError(TufClientError):
    reason = events.TUF_REFUSED


class TufDownloadError(TufClientError):
    reason = events.DOWNLOAD_FAILED


@dataclass(frozen=True)
class TargetFacts:
    """What the signed targets metadata says of one target."""

    sha256: str | None
    length: int


class TufClient(Protocol):
    """One TUF session of the updater (made fresh for each attempt)."""

    def target(self, target_path: str) -> TargetFacts | None:
        """Refresh the metadata and return the target's signed facts; None when it is not listed."""

    def download(self, target_path: str, dest: Path) -> None:
        """Put the target's bytes, verified against the signed facts, at ``dest``."""


TufClientFactory = Callable[[], TufClient]


class NgclientTuf:
    """``TufClient`` on python-tuf's ngclient: the device's real TUF client."""

    def __init__(self, state: StateDir, fetcher: ResumingFetcher | None = None) -> None:
        from tuf.ngclient.updater import Updater as NgUpdater

        from agent.fetcher import ResumingFetcher

        identity = state.load_identity()
        base = identity.server_url.rstrip("/")
        if not state.tuf_root_file.exists():
            raise TufRefusedError(f"{state.tuf_root_file} does not exist: this device has no TUF root",
                                  fix="enroll the device (edgefleet agent enroll)")
        state.downloads_dir.mkdir(parents=True, exist_ok=True)
        fetcher = fetcher or ResumingFetcher(state.downloads_dir)
        # The device's API token rides on every request (metadata too: the same server), so a
        # fleet with private targets serves this device; read per client, so a re-enrolled
        # device's new token is used from its next attempt.
        credentials = state.load_credentials()
        fetcher.credential = credentials.api_token if credentials is not None and credentials.api_token else None
        # bootstrap=None: the root.json in the state dir (from enrollment, then updated in place by
        # ngclient as the server rotates root) is the trust anchor.
        with _tuf_errors():
            self._updater: NgUpdater = NgUpdater(
                metadata_dir=str(state.tuf_dir),
                metadata_base_url=identity.tuf_metadata_url or f"{base}/tuf/metadata/",
                target_dir=str(state.downloads_dir),
                target_base_url=identity.tuf_targets_url or f"{base}/tuf/targets/",
                fetcher=fetcher, bootstrap=None)
        self._infos: dict[str, TargetFile] = {}

    def target(self, target_path: str) -> TargetFacts | None:
        with _tuf_errors():
            self._updater.refresh()
            info = self._updater.get_targetinfo(target_path)
        if info is None:
            return None
        self._infos[target_path] = info
        return TargetFacts(info.hashes.get("sha256"), info.length)

    def download(self, target_path: str, dest: Path) -> None:
        info = self._infos.get(target_path)
        if info is None:
            facts = self.target(target_path)
            if facts is None:
                raise TufRefusedError(f"TUF targets metadata does not list {target_path}")
            info = self._infos[target_path]
        with _tuf_errors():
            if self._updater.find_cached_target(info, str(dest)) is None:
                self._updater.download_target(info, str(dest))


@contextlib.contextmanager
def _tuf_errors() -> Iterator[None]:
    """Turn tuf's exceptions (and OS errors on the way) into ``TufClientError``s."""
    from tuf.api import exceptions as tuf_errors

    try:
        yield
    # Order matters: LengthOrHashMismatchError is a RepositoryError; DownloadError is not one.
    except tuf_errors.LengthOrHashMismatchError as exc:
        raise TufMismatchError(f"downloaded bytes do not match TUF's hash ({exc})") from exc
    except (tuf_errors.DownloadError, OSError) as exc:
        raise TufDownloadError(f"download failed: {exc}") from exc
    except tuf_errors.RepositoryError as exc:
        raise TufRefusedError(f"TUF metadata refused: {type(exc).__name__}: {exc}") from exc


def ngclient_factory(state: StateDir, fetcher: ResumingFetcher | None = None) -> TufClientFactory:
    """The default factory: a fresh ``NgclientTuf`` per attempt, all sharing one fetcher."""

    def make() -> TufClient:
        return NgclientTuf(state, fetcher)

    return make


__all__ = ["NgclientTuf", "TargetFacts", "TufClient", "TufClientError", "TufClientFactory", "TufDownloadError",
           "TufMismatchError", "TufRefusedError", "ngclient_factory"]
