"""Pausing a container while its archive is read: shared, counted, and never left behind.

Three promises, each with its mechanism:

* **Shared.** Two snapshots of one container at once (two ``Client`` objects,
  or two processes on one host) share one pause: the first pauses, the last
  unpauses. The count lives in a small JSON file per container id under the
  runtime directory (:func:`runtime_dir`), changed only under an exclusive
  ``flock`` of a lock file beside it, so it is shared by every docksnap process
  of this user on this host. ``flock`` locks belong to an open file, so two
  clients in one process exclude each other as two processes do.
* **Never someone else's.** docksnap unpauses only a pause it made. A container
  already paused when the first holder arrives (``docker pause`` by a user, or
  another tool) is read as it is and left paused.
* **Never outliving its holder.** Each hold has a watchdog: a child process
  (``service/watchdog.py``) that blocks on a pipe whose only
  writer end is the holder's. When the holder ends in any way, SIGKILL
  included, the kernel closes that end; the watchdog wakes and releases the
  hold on the holder's behalf, through the same counted release, talking to
  the engine itself (so a remote ``DOCKER_HOST`` works too). A release that was
  already done is a no-op, so the watchdog of a holder that finished normally
  just exits. Holders are identified by pid, process start time and boot id,
  so a reused pid is not mistaken for a live holder.

If both the holder and its watchdog die (``kill -9`` of the whole process
group), the state file still says docksnap paused the container and that
every holder is dead: :func:`recover_stale_pauses`, which the CLI runs before
every command, and the next snapshot of that container unpause it and log a
warning saying so.

Limits, stated: the state is per user and per host. Two hosts (or two users)
snapshotting one container through a shared engine do not see each other's
holds: the second finds the container paused by "someone else", reads it and
leaves it paused, and its read may outlast the first one's pause. A holder
killed between recording its intent and sending the pause leaves a record
saying docksnap paused a running container; if a user pauses that container in
the next moment, before any watchdog or later command looks, docksnap would
take that pause for its own. A child made with a bare ``fork()`` (no exec)
while a hold is open inherits the pipe's writer end, so the watchdog waits for
that child too; every exec'd child docksnap starts closes it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import fcntl
import json
import logging
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from docksnap.errors import DockerError
from docksnap.service.failpoint import failpoint

log = logging.getLogger(__name__)

_LOCK_POLL_S = 0.005
_WATCHDOG_EXIT_WAIT_S = 5.0
_WATCHDOG_ARM_S = 10.0


class PauseEngine(Protocol):
    """The three engine calls a pause needs (``DockerClient`` has them)."""

    async def inspect_container(self, container: str) -> dict[str, Any]: ...

    async def pause_container(self, container: str) -> None: ...

    async def unpause_container(self, container: str) -> None: ...


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where pause records live: per user, per host, gone at reboot where possible.

    ``DOCKSNAP_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/docksnap``, else
    ``/tmp/docksnap-UID`` (as tmux does). Not created here.
    """
    env = os.environ if env is None else env
    if env.get("DOCKSNAP_RUNTIME_DIR"):
        return Path(env["DOCKSNAP_RUNTIME_DIR"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"], "docksnap")
    return Path(tempfile.gettempdir(), f"docksnap-{os.getuid()}")


def _private_dir(path: Path) -> Path:
    """Create ``path`` (0700) if missing and refuse one another user could tamper with.

    Another user who could write here could forge a record that makes docksnap
    unpause a container, or plant a symlink that redirects our writes.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"docksnap runtime directory {str(path)!r} must be a directory owned by uid "
            f"{os.getuid()} with mode 0700"
        )
    return path


# -- who holds a pause --------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" when unknown)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    return raw.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True, slots=True)
class Holder:
    """One hold of a pause: a random token and the process that holds it."""

    token: str
    pid: int
    start: str
    boot: str

    @classmethod
    def current(cls, token: str) -> Holder:
        pid = os.getpid()
        return cls(token=token, pid=pid, start=_start_time(pid), boot=_boot_id())

    def alive(self) -> bool:
        """Whether the holding process still runs (not a later process with its pid)."""
        if self.boot != _boot_id():
            return False
        if self.start:
            return _start_time(self.pid) == self.start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass(frozen=True, slots=True)
class PauseRecord:
    """The shared state of one container's pause, as kept in its JSON file."""

    container_id: str
    name: str
    engine: str
    paused_by_docksnap: bool
    holders: tuple[Holder, ...] = ()

    def to_json(self) -> bytes:
        data = {
            "container_id": self.container_id,
            "name": self.name,
            "engine": self.engine,
            "paused_by_docksnap": self.paused_by_docksnap,
            "holders": [
                {"token": h.token, "pid": h.pid, "start": h.start, "boot": h.boot}
                for h in self.holders
            ],
        }
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PauseRecord:
        data = json.loads(raw)
        return cls(
            container_id=str(data["container_id"]),
            name=str(data["name"]),
            engine=str(data["engine"]),
            paused_by_docksnap=bool(data["paused_by_docksnap"]),
            holders=tuple(
                Holder(str(h["token"]), int(h["pid"]), str(h["start"]), str(h["boot"]))
                for h in data["holders"]
            ),
        )


class _Slot:
    """One container's record, opened under its lock (see :meth:`PauseRegistry._locked`)."""

    def __init__(self, directory: Path, container_id: str) -> None:
        self._path = directory / f"{container_id}.json"
        self._lock_path = directory / f"{container_id}.lock"

    def read(self) -> PauseRecord | None:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return PauseRecord.from_json(raw)
        except (ValueError, KeyError, TypeError):
            # Written by rename, so never torn; unreadable means tampered or a
            # future format: leave the container alone rather than guess.
            log.warning("ignoring unreadable pause record %s", self._path)
            return None

    def write(self, record: PauseRecord) -> None:
        # Replaced by rename, so a holder killed mid-write never leaves half a
        # record that would lose the count (and with it, the unpause).
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, record.to_json())
        finally:
            os.close(fd)
        os.replace(tmp, self._path)

    def remove(self) -> None:
        """Drop the record and its lock file (the lock is still held by us)."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._lock_path.unlink()


class Outcome(enum.Enum):
    """What a release did."""

    NOT_HELD = "not held"  # the token held nothing (already released)
    KEPT = "kept"  # other holders remain; the container stays paused
    UNPAUSED = "unpaused"  # the last holder of docksnap's pause: unpaused
    LEFT = "left"  # the last holder of someone else's pause: left paused


class PauseRegistry:
    """The per-host, per-user table of pauses; every method is safe across processes."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or runtime_dir()

    @contextlib.asynccontextmanager
    async def _locked(self, container_id: str) -> AsyncIterator[_Slot]:
        """Hold the container's lock file exclusively for the body.

        Polled with ``LOCK_NB`` so that waiting stays cancellable. A holder that
        drops the record also unlinks the lock file; whoever locked that old
        file meanwhile finds it no longer at its path and tries again.
        """
        directory = _private_dir(self.directory)
        slot = _Slot(directory, container_id)
        while True:
            fd = os.open(slot._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(_LOCK_POLL_S)
                try:
                    same = os.stat(slot._lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    try:
                        yield slot
                    finally:
                        # No record left: drop the lock file too (still ours), so
                        # none piles up; late lockers of it notice and retry.
                        if not slot._path.exists():
                            slot.remove()
                    return
            finally:
                os.close(fd)

    async def acquire(
        self, engine: PauseEngine, engine_url: str, container_id: str, name: str, token: str
    ) -> bool:
        """Add a hold on ``container_id``'s pause, pausing it if nobody holds it yet.

        Returns whether docksnap's pause is in force (False: someone else paused
        it). On failure, the caller must still :meth:`release` ``token``: the
        record of the intent to pause is written before the pause is sent.
        """
        me = Holder.current(token)
        async with self._locked(container_id) as slot:
            record = slot.read()
            if record is not None:
                live = tuple(h for h in record.holders if h.alive())
                if live:
                    slot.write(replace(record, holders=(*live, me)))
                    return record.paused_by_docksnap
            info = await engine.inspect_container(container_id)
            if (info.get("State") or {}).get("Paused"):
                ours = record is not None and record.paused_by_docksnap
                if ours:
                    log.warning(
                        "container %s was left paused by a docksnap process that died "
                        "(pid %s); it is unpaused after this snapshot",
                        name,
                        ", ".join(str(h.pid) for h in record.holders) if record else "?",
                    )
                slot.write(PauseRecord(container_id, name, engine_url, ours, (me,)))
                return ours
            slot.write(PauseRecord(container_id, name, engine_url, True, (me,)))
            await failpoint("pause-intent")
            try:
                await engine.pause_container(container_id)
            except DockerError as exc:
                if not _says(exc, "already paused"):
                    raise
                # Paused by someone else since we looked: theirs to unpause.
                slot.write(PauseRecord(container_id, name, engine_url, False, (me,)))
                return False
            return True

    async def release(self, engine: PauseEngine, container_id: str, token: str) -> Outcome:
        """Drop the hold ``token``; the last holder of docksnap's pause unpauses.

        Idempotent: releasing a token that holds nothing does nothing. If the
        unpause fails (engine unreachable), the record keeps the token, so the
        watchdog or a later command can try again.
        """
        async with self._locked(container_id) as slot:
            record = slot.read()
            if record is None or all(h.token != token for h in record.holders):
                return Outcome.NOT_HELD
            rest = tuple(h for h in record.holders if h.token != token and h.alive())
            if rest:
                slot.write(replace(record, holders=rest))
                return Outcome.KEPT
            outcome = Outcome.LEFT
            if record.paused_by_docksnap:
                await _unpause(engine, container_id)
                outcome = Outcome.UNPAUSED
            slot.remove()
            return outcome

    async def recover(self, engine: PauseEngine, engine_url: str) -> list[PauseRecord]:
        """Unpause every container docksnap paused whose holders all died.

        Returns the records of the containers unpaused. Records of containers
        this engine does not know are kept if they name another engine (they
        may be that engine's), dropped if they name this one.
        """
        recovered: list[PauseRecord] = []
        if not self.directory.is_dir():
            return recovered
        for path in sorted(self.directory.glob("*.json")):
            container_id = path.stem
            async with self._locked(container_id) as slot:
                record = slot.read()
                if record is None or any(h.alive() for h in record.holders):
                    continue
                if record.paused_by_docksnap:
                    try:
                        info = await engine.inspect_container(container_id)
                    except DockerError as exc:
                        if exc.status != 404 or record.engine != engine_url:
                            continue
                        info = {}
                    if (info.get("State") or {}).get("Paused"):
                        await _unpause(engine, container_id)
                        recovered.append(record)
                slot.remove()
        return recovered


def _says(exc: DockerError, *phrases: str) -> bool:
    """Whether the engine's refusal is one of ``phrases`` (its status varies by version)."""
    return exc.status in (409, 500) and any(p in exc.message.lower() for p in phrases)


async def _unpause(engine: PauseEngine, container_id: str) -> None:
    try:
        await engine.unpause_container(container_id)
    except DockerError as exc:
        # Gone (404), or not paused / not running (409, or 500 from some engine
        # versions): either way nothing is left frozen.
        if exc.status != 404 and not _says(exc, "not paused", "not running"):
            raise


# -- the watchdog -------------------------------------------------------------------

_retired: set[subprocess.Popen[bytes]] = set()


def _reap() -> None:
    for proc in list(_retired):
        if proc.poll() is not None:
            _retired.discard(proc)


def _reap_at_exit() -> None:
    deadline = time.monotonic() + _WATCHDOG_EXIT_WAIT_S
    for proc in list(_retired):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _retired.clear()


atexit.register(_reap_at_exit)


class Watchdog:
    """The child process that releases a hold if its holder dies (module docstring)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    @classmethod
    def spawn(cls, engine_url: str, directory: Path, container_id: str, token: str) -> Watchdog:
        """Start the watchdog for ``token``; it is armed as soon as this returns.

        Its only stdin is a pipe whose writer end stays in this process (and is
        close-on-exec, so no other child inherits it and keeps it open). It runs
        in a session of its own: a Ctrl-C meant for docksnap must not kill it.
        """
        _reap()
        script = Path(__file__).with_name("watchdog.py")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-P",
                str(script),
                engine_url,
                str(directory),
                container_id,
                token,
                str(os.getpid()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        return cls(proc)

    async def armed(self) -> None:
        """Wait until the watchdog runs (it says so on its stdout).

        Waited for before the pause is sent, for two reasons: its interpreter
        start-up then takes no CPU from the read of the paused container, and
        a watchdog that cannot start is seen at once (logged; the pause then
        relies on the recovery of later commands, as after a ``kill -9`` of both).
        """
        assert self._proc.stdout is not None
        try:
            said = await asyncio.wait_for(
                asyncio.to_thread(self._proc.stdout.read, 5), _WATCHDOG_ARM_S
            )
        except TimeoutError:
            said = b""
        if said != b"armed":
            log.warning("the pause watchdog did not start (pid %d)", self._proc.pid)

    def dismiss(self, released: bool) -> None:
        """The hold ended: close the pipe; the watchdog exits on its own.

        ``released``: the hold is gone, so the watchdog has nothing to do (else
        it retries the release). Not waited for here; it is reaped later, at
        the latest when this process exits.
        """
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):  # a watchdog already gone
                if released:
                    self._proc.stdin.write(b"released")
                self._proc.stdin.close()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        _retired.add(self._proc)


# -- what the snapshot path uses ----------------------------------------------------


@dataclass(slots=True)
class PauseHold:
    """A hold on a container's pause: ``release()`` early (idempotent), ``paused_s`` after."""

    _release: Callable[[], Any] | None
    _started: float = field(default_factory=time.monotonic)
    _ended: float | None = None

    async def release(self) -> None:
        """Release once; a release that failed is tried again by the next call."""
        action, self._release = self._release, None
        if action is not None:
            try:
                await action()
            except BaseException:
                self._release = action
                raise
            self._ended = time.monotonic()

    @property
    def paused_s(self) -> float:
        """Seconds this hold kept the container paused (0.0 for no pause)."""
        if self._ended is None:
            return 0.0 if self._release is None else time.monotonic() - self._started
        return self._ended - self._started


@contextlib.asynccontextmanager
async def paused(
    engine: PauseEngine,
    engine_url: str,
    container_id: str,
    name: str,
    *,
    registry: PauseRegistry | None = None,
) -> AsyncIterator[PauseHold]:
    """Hold ``container_id`` paused for the body (or until ``hold.release()``).

    The watchdog is armed before the pause is sent, and the hold is released
    (shielded from cancellation) however the body ends.
    """
    registry = registry or PauseRegistry()
    token = secrets.token_hex(16)
    watchdog = Watchdog.spawn(engine_url, _private_dir(registry.directory), container_id, token)
    released = False
    try:
        await watchdog.armed()
        hold = PauseHold(lambda: registry.release(engine, container_id, token))
        try:
            await registry.acquire(engine, engine_url, container_id, name, token)
            await failpoint("paused")
            yield hold
        finally:
            await asyncio.shield(hold.release())
            released = True
    finally:
        watchdog.dismiss(released)


def no_pause() -> PauseHold:
    """The hold of a snapshot taken without pausing."""
    return PauseHold(None)


async def recover_stale_pauses(
    engine: PauseEngine, engine_url: str, *, registry: PauseRegistry | None = None
) -> list[PauseRecord]:
    """Unpause containers left paused by docksnap processes that died; log each one."""
    records = await (registry or PauseRegistry()).recover(engine, engine_url)
    for record in records:
        log.warning(
            "unpaused container %s: a docksnap process (pid %s) paused it and died",
            record.name,
            ", ".join(str(h.pid) for h in record.holders) or "?",
        )
    return records


def held_tokens(directory: Path) -> Iterator[tuple[str, PauseRecord]]:
    """Every record in ``directory`` by container id (for tests and diagnostics)."""
    for path in sorted(directory.glob("*.json")):
        record = _Slot(directory, path.stem).read()
        if record is not None:
            yield path.stem, record
