"""Who may talk to the broker: the ``BrokerAccounts`` seam and its implementations.

``fleet_server.registry.devices.Devices`` calls ``BrokerAccounts.enrolled`` and ``revoked``
after each change to who may connect, and ``sync`` when the server starts. Each backend picks
what it needs: ``MosquittoAccounts`` re-renders everything from ``read_users``; the
dynamic-security backend (``fleet_server.broker.dynsec.DynsecAccounts``, chosen with
``broker_accounts = "mosquitto-dynsec"``) changes the one account, over MQTT, and reconciles
the whole list only in ``sync``. ``UnmanagedBroker`` writes nothing (the embedded broker, or
one whose accounts someone else manages).

``MosquittoAccounts`` (``broker_accounts = "mosquitto-files"``) renders the
password and ACL files with ``fleet_server.broker.auth`` into the configured directory and,
when a pid file is configured, sends Mosquitto SIGHUP so it re-reads them at once. Without a
pid file the files are still written and the operator reloads Mosquitto (e.g. ``systemctl
reload mosquitto``); the server logs that. A pid file that does not exist yet, or names no
running process, means Mosquitto has not started: the files are written, a warning says so,
and Mosquitto reads them when it starts (issue 17: server and broker start in either order).

This module does not start or configure Mosquitto itself (its mosquitto.conf must name the
two files: ``password_file DIR/passwd`` and ``acl_file DIR/acl``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgefleet.atomic import file_lock
from fleet_server.errors import BrokerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerUser:
    """One account on the broker. ``device_id`` None means the server's own, unrestricted user."""

    username: str
    password_hash: str
    device_id: str | None


ReadUsers = Callable[[], Sequence[BrokerUser]]


class BrokerAccounts(Protocol):
    """Makes the broker accept exactly the users ``read_users`` returns (each device only on its own topics).

    ``read_users`` is called while the accounts are locked, so the list written is never older
    than one another writer wrote before it: reading first and locking only for the write let
    two enrollments finishing together write the earlier list last, locking the newer device out.
    ``enrolled`` gets the new device's clear password (a backend that cannot take a hash needs
    it; it must never be logged nor stored); ``revoked`` must also end the device's live session.
    """

    def sync(self, read_users: ReadUsers) -> None: ...

    def enrolled(self, user: BrokerUser, password: str, read_users: ReadUsers) -> None: ...

    def revoked(self, user: BrokerUser, read_users: ReadUsers) -> None: ...


class UnmanagedBroker:
    """For a broker whose accounts someone else manages (or the embedded one): nothing to write."""

    def sync(self, read_users: ReadUsers) -> None:
        log.debug("broker accounts are not managed by this server; device users not written")

    def enrolled(self, user: BrokerUser, password: str, read_users: ReadUsers) -> None:
        self.sync(read_users)

    def revoked(self, user: BrokerUser, read_users: ReadUsers) -> None:
        self.sync(read_users)


class MosquittoAccounts:
    def __init__(self, directory: Path, pid_file: Path | None = None) -> None:
        self.directory = Path(directory)
        self.pid_file = pid_file

    def enrolled(self, user: BrokerUser, password: str, read_users: ReadUsers) -> None:
        self.sync(read_users)  # the whole files again: O(fleet) per enrollment (scripts/bench accounts)

    def revoked(self, user: BrokerUser, read_users: ReadUsers) -> None:
        self.sync(read_users)  # Mosquitto 2 drops the live session of a user gone from the files on reload

    def sync(self, read_users: ReadUsers) -> None:
        from fleet_server.broker.auth import (
            MosquittoNotRunning,
            reload_mosquitto,
            write_broker_files,
        )
        from fleet_server.trust.errors import BrokerAuthError

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Read and write under one lock (threads and replicas alike): the files always end
            # up holding the newest list, whatever order concurrent enrollments finish in.
            with file_lock(self.directory / ".lock"):
                users = read_users()
                passwords = {u.username: u.password_hash for u in users}
                devices = [(u.username, u.device_id) for u in users if u.device_id is not None]
                servers = [u.username for u in users if u.device_id is None]
                write_broker_files(self.directory, passwords=passwords, devices=devices, server_users=servers)
                if self.pid_file is not None:
                    try:
                        reload_mosquitto(self.pid_file)
                    except MosquittoNotRunning as exc:
                        log.warning("wrote Mosquitto password/ACL files for %d users in %s; Mosquitto is not "
                                    "running (%s), it reads them when it starts", len(users), self.directory,
                                    exc.message)
        except BrokerAuthError as exc:
            raise BrokerError(f"broker accounts not updated: {exc.message}", fix=exc.fix) from exc
        except OSError as exc:
            raise BrokerError(f"broker accounts not updated: {self.directory}: {exc}",
                              fix="check that the Mosquitto directory is writable by the server") from exc
        if self.pid_file is None:
            log.info("wrote Mosquitto password/ACL files for %d users in %s; reload Mosquitto to apply them",
                     len(users), self.directory)
