"""Creator identities: what gc relies on to tell an orphan from a live docksnap's resource."""

from __future__ import annotations

import subprocess
import sys

from docksnap.process import boot_id, creator_alive, creator_id


def test_this_process_is_alive() -> None:
    assert creator_alive(creator_id()) is True


def test_a_finished_process_is_dead() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "from docksnap.process import creator_id; print(creator_id())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert creator_alive(child.stdout.strip()) is False


def test_a_reused_pid_is_not_its_old_process() -> None:
    boot, pid, ticks = creator_id().split("/")
    assert creator_alive(f"{boot}/{pid}/{int(ticks) + 1}") is False


def test_another_host_or_garbage_cannot_be_told() -> None:
    _, pid, ticks = creator_id().split("/")
    assert boot_id()  # Linux says which boot this is
    assert creator_alive(f"00000000-0000-0000-0000-000000000000/{pid}/{ticks}") is None
    for garbage in ("", "x", f"{boot_id()}/abc/1", f"{boot_id()}/1/"):
        assert creator_alive(garbage) is None
