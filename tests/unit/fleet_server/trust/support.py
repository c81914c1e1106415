"""Helpers for the trust tests: an injectable clock, a ready repository, a disk-backed TUF fetcher."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from fleet_server.trust.keys import KeyStore, init_keys
from fleet_server.trust.tuf_repo import TufRepository

START = datetime.now(UTC).replace(microsecond=0)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Fixture:
    repo: TufRepository
    keys: KeyStore
    keys_dir: Path
    root_keys_dir: Path
    clock: Clock


def make_repo(tmp_path: Path, *, root_key_count: int = 1, root_threshold: int = 1) -> Fixture:
    keys_dir, root_keys_dir = tmp_path / "data" / "keys", tmp_path / "offline-root"
    init_keys(keys_dir, root_keys_dir, root_key_count=root_key_count, root_threshold=root_threshold)
    keys = KeyStore.load(keys_dir)
    clock = Clock()
    repo = TufRepository.create(tmp_path / "data" / "tuf", keys, root_keys_dir, clock=clock)
    return Fixture(repo, keys, keys_dir, root_keys_dir, clock)


class DirectoryFetcher(FetcherInterface):
    """Serves ``repo://`` URLs from a repository directory: ngclient's full workflow, without HTTP."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = repo_dir

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.repo_dir / url.removeprefix("repo://")
        if not path.is_file():
            raise DownloadHTTPError(f"{url} not found", 404)
        return iter([path.read_bytes()])


def make_updater(repo: TufRepository, client_dir: Path, bootstrap: bytes) -> Updater:
    (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(client_dir / "metadata"),
        metadata_base_url="repo://metadata/",
        target_dir=str(client_dir / "targets"),
        target_base_url="repo://targets/",
        fetcher=DirectoryFetcher(repo.repo_dir),
        bootstrap=bootstrap,
    )
