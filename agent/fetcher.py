"""The HTTP fetcher ``tuf.ngclient`` uses on the device: timeouts, Range resume, progress, bounds.

``ResumingFetcher`` implements ``tuf.ngclient.fetcher.FetcherInterface`` with urllib3 (already
a tuf dependency):

- every wait is bounded: a connect timeout, a read timeout between bytes, and optionally a
  deadline for the whole transfer (a server trickling one byte every 29 s must not hold an
  update for days);
- a target download keeps its bytes in ``downloads_dir/.partial/`` as they arrive; after a cut
  connection (or a killed agent) the next attempt asks for the rest with
  ``Range: bytes=N-`` and appends only if the server answers 206 with a ``Content-Range``
  starting at N, else it starts again from byte 0;
- progress of a target download is reported through a callback ``(url, bytes_so_far, total_or_None)``;
- no more than ngclient's ``max_length`` is ever accepted;
- with a ``credential`` (the device's API token), every request carries
  ``Authorization: Bearer <token>``: a fleet whose models are confidential serves targets to
  enrolled devices only (the server's ``private_targets``; docs/security.md). urllib3 drops the
  header on a redirect to another host, so it goes to the fleet server alone;
- failures are ``tuf.api.exceptions.DownloadError`` subclasses (``SlowRetrievalError`` for
  timeouts, ``DownloadHTTPError`` for HTTP errors, ``DownloadLengthMismatchError`` for too
  much data) so ngclient and the updater handle them like any download failure.

Only content-addressed URLs are resumed (consistent-snapshot target names start with the
file's sha256), because there the same URL always names the same bytes; metadata such as
``timestamp.json`` changes under one URL and is always fetched whole. Whatever is resumed,
ngclient still checks length and hashes against signed metadata before anyone reads it.

Not here: deciding what to download or when to retry later (agent/updater.py), and trust
decisions of any kind (tuf.ngclient).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from agent.errors import AgentError

log = logging.getLogger("agent.fetcher")

Progress = Callable[[str, int, int | None], None]
_CONTENT_ADDRESSED = re.compile(r"^[0-9a-f]{64}\.")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
PARTIAL_DIR = ".partial"


def content_addressed(url: str) -> bool:
    """True when the URL's file name starts with a sha256 (a TUF consistent-snapshot target)."""
    return bool(_CONTENT_ADDRESSED.match(urlsplit(url).path.rsplit("/", 1)[-1]))


class FetcherError(AgentError):
    """The fetcher was configured with impossible settings. Download failures are tuf's DownloadError."""


class _Restart(Exception):
    """The server did not honour our Range request: start from byte 0."""


class ResumingFetcher(FetcherInterface):
    """A ``FetcherInterface`` that resumes target downloads from ``downloads_dir``."""

    def __init__(
        self,
        downloads_dir: str | os.PathLike[str],
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        total_timeout: float | None = None,
        attempts: int = 3,
        chunk_size: int = 64 * 1024,
        progress: Progress | None = None,
        resumable: Callable[[str], bool] = content_addressed,
        pool: urllib3.PoolManager | None = None,
        clock: Callable[[], float] = time.monotonic,
        credential: str | None = None,
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0 or attempts < 1 or chunk_size < 1:
            raise FetcherError("fetcher timeouts and chunk size must be positive and attempts at least 1",
                               fix="check the agent's download settings")
        self.downloads_dir = Path(downloads_dir)
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.total_timeout = total_timeout
        self.attempts = attempts
        self.chunk_size = chunk_size
        self.progress = progress
        self.resumable = resumable
        self.clock = clock
        self.credential = credential
        # Body cuts are left to our own resume logic (urllib3 never retries a streamed body).
        # Connects and the wait for the status line are retried once: after a network cut the
        # pool still holds keep-alive connections the server has closed, and the first GET on
        # one fails with ConnectionResetError before any byte of the answer arrived.
        self._pool = pool or urllib3.PoolManager(retries=urllib3.Retry(total=2, connect=1, read=1, redirect=3,
                                                                        status=0, raise_on_status=False))

    # -- plain fetch (metadata): the interface's one abstract method ------------------------------
    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self._request(url, {})
        if response.status >= 400:
            _discard(response)
            raise exceptions.DownloadHTTPError(f"GET {url} answered HTTP {response.status}", response.status)
        return self._stream(url, response, 0, None)

    def _request(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        if self.credential:
            headers = {**headers, "Authorization": f"Bearer {self.credential}"}
        try:
            return self._pool.request("GET", url, headers=headers, preload_content=False, timeout=self.timeout)
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.TimeoutError):
                raise exceptions.SlowRetrievalError(f"GET {url}: no connection or answer within the timeout") from exc
            raise exceptions.DownloadError(f"GET {url}: {exc.reason}") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"GET {url}: no answer within the timeout") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"GET {url}: {exc}") from exc

    def _stream(self, url: str, response: urllib3.BaseHTTPResponse, start: int,
                total: int | None) -> Generator[bytes, None, None]:
        began = self.clock()
        done = start
        finished = False
        try:
            # read1 hands over bytes as they arrive, so a cut loses none of what already came.
            while chunk := response.read1(self.chunk_size):
                done += len(chunk)
                yield chunk
                if self.total_timeout is not None and self.clock() - began > self.total_timeout:
                    raise exceptions.SlowRetrievalError(
                        f"GET {url}: transfer took longer than {self.total_timeout:g} s (a stalled or trickling link)")
            finished = True
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"GET {url}: no data for {self.timeout.read_timeout} s") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # ProtocolError / IncompleteRead: the connection was cut before Content-Length.
            raise exceptions.DownloadError(f"GET {url}: connection lost after {done} bytes ({exc})") from exc
        finally:
            if finished:
                response.release_conn()
            else:  # abandoned mid-body (too long, too slow, cut): the connection is not reusable
                _discard(response)

    # -- target download with resume --------------------------------------------------------------
    def partial_path(self, url: str) -> Path:
        name = urlsplit(url).path.rsplit("/", 1)[-1][-80:] or "download"
        return self.downloads_dir / PARTIAL_DIR / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        if not self.resumable(url):
            with super().download_file(url, max_length) as handle:
                yield handle
            return
        partial = self.partial_path(url)
        partial.parent.mkdir(parents=True, exist_ok=True)
        last: exceptions.DownloadError | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                self._continue(url, partial, max_length)
                break
            except exceptions.DownloadLengthMismatchError:
                partial.unlink(missing_ok=True)  # more bytes than signed metadata allows: never reuse
                raise
            except exceptions.DownloadHTTPError:
                raise
            except exceptions.DownloadError as exc:
                last = exc
                log.info("download of %s interrupted (attempt %d/%d, %d bytes kept): %s", url, attempt,
                         self.attempts, _size(partial), exc)
        else:
            assert last is not None
            raise last
        try:
            with open(partial, "rb") as handle:
                yield handle
        finally:
            # Consumed or refused by ngclient's hash check: either way these bytes are done with.
            partial.unlink(missing_ok=True)

    def _continue(self, url: str, partial: Path, max_length: int) -> None:
        """Bring ``partial`` to the full file, resuming from its current size when we can."""
        offset = _size(partial)
        if offset > max_length:
            partial.unlink()
            offset = 0
        try:
            self._transfer(url, partial, offset, max_length)
        except _Restart as why:
            log.info("%s; downloading %s again from byte 0", why, url)
            partial.unlink(missing_ok=True)
            self._transfer(url, partial, 0, max_length)

    def _transfer(self, url: str, partial: Path, offset: int, max_length: int) -> None:
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        response = self._request(url, headers)
        total: int | None
        if offset > 0 and response.status == 206:
            honoured, total = _check_content_range(response.headers.get("Content-Range"), offset)
            if not honoured:
                _discard(response)
                raise _Restart(f"server answered Range bytes={offset}- with Content-Range "
                               f"{response.headers.get('Content-Range')!r}")
            mode = "ab"
        elif offset > 0 and response.status == 416:
            _discard(response)
            raise _Restart(f"server cannot serve bytes from {offset} (HTTP 416)")
        elif response.status >= 400:
            _discard(response)
            raise exceptions.DownloadHTTPError(f"GET {url} answered HTTP {response.status}", response.status)
        else:
            if offset > 0:
                log.info("server ignored Range for %s (HTTP %d): starting again from byte 0", url, response.status)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if total is not None and total > max_length:
            _discard(response)
            raise exceptions.DownloadLengthMismatchError(f"{url} is {total} bytes, over the {max_length} bytes allowed")
        received = offset
        with open(partial, mode) as out, contextlib.closing(self._stream(url, response, offset, total)) as chunks:
            for chunk in chunks:
                received += len(chunk)
                if received > max_length:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{url} sent more than the {max_length} bytes allowed")
                out.write(chunk)
                out.flush()  # into the kernel now: a SIGKILL must not take buffered bytes with it
                if self.progress is not None:
                    # After the write: what progress reports is on disk for a resume.
                    self.progress(url, received, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received != total:
            raise exceptions.DownloadError(f"GET {url}: connection closed at {received} of {total} bytes")


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Drop a response whose body we will not read.

    Handing its connection back to the pool with body bytes unread would make the next request
    on it fail (urllib3 would read our leftovers as the next answer), so the connection is closed.
    """
    response.close()
    response.release_conn()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _check_content_range(header: str | None, offset: int) -> tuple[bool, int | None]:
    """Whether a 206's Content-Range starts exactly at ``offset``, and the total size if given."""
    match = _CONTENT_RANGE.match(header or "")
    if not match or int(match.group(1)) != offset:
        return False, None
    return True, None if match.group(3) == "*" else int(match.group(3))
