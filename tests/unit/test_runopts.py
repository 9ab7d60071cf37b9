"""``docker run`` option parsing: docker's value formats, and bad values named in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from docksnap.errors import InvalidArgumentError
from docksnap.service import runopts
from docksnap.service.runopts import PortBinding


@pytest.mark.parametrize(
    ("spec", "binding"),
    [
        ("80", PortBinding("80/tcp")),
        ("8080:80", PortBinding("80/tcp", "", "8080")),
        ("127.0.0.1:8080:80", PortBinding("80/tcp", "127.0.0.1", "8080")),
        ("127.0.0.1::80", PortBinding("80/tcp", "127.0.0.1", "")),
        ("53:53/udp", PortBinding("53/udp", "", "53")),
        ("[::1]:8080:80", PortBinding("80/tcp", "::1", "8080")),
    ],
)
def test_publish_formats(spec: str, binding: PortBinding) -> None:
    assert runopts.parse_publish(spec) == binding


@pytest.mark.parametrize(
    "spec", ["", "http", "70000", "1:2:3:4", "localhost:80:80", "80/xyz", "0:80", "[::1]80"]
)
def test_bad_publish_is_named(spec: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"port|protocol|address|IP"):
        runopts.parse_publish(spec)


def test_volume_kinds() -> None:
    bind = runopts.parse_volume("/srv/data:/data:ro")
    assert (bind.target, bind.anonymous, bind.spec) == ("/data", False, "/srv/data:/data:ro")
    named = runopts.parse_volume("cache:/var/cache/")
    assert (named.target, named.anonymous) == ("/var/cache", False)
    anonymous = runopts.parse_volume("/scratch")
    assert (anonymous.target, anonymous.anonymous) == ("/scratch", True)


@pytest.mark.parametrize(
    "spec", ["", "relative", "/a:rel", "/a:/b:bogus", "/a:/b:ro:x", "../up:/b", ":/b"]
)
def test_bad_volume_is_named(spec: str) -> None:
    with pytest.raises(InvalidArgumentError):
        runopts.parse_volume(spec)


@pytest.mark.parametrize(
    ("text", "value"), [("512m", 512 << 20), ("2g", 2 << 30), ("64K", 64 << 10), ("1000", 1000)]
)
def test_memory(text: str, value: int) -> None:
    assert runopts.parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "0", "-1m", "1.5g", "12x"])
def test_bad_memory(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid memory"):
        runopts.parse_memory(text)


def test_cpus_and_restart() -> None:
    assert runopts.parse_cpus("1.5") == 1_500_000_000
    assert runopts.parse_cpus(0.25) == 250_000_000
    for bad in ("0", "-1", "many", True):
        with pytest.raises(InvalidArgumentError, match="invalid cpus"):
            runopts.parse_cpus(bad)
    assert runopts.parse_restart("on-failure:3") == ("on-failure", 3)
    assert runopts.parse_restart("unless-stopped") == ("unless-stopped", 0)
    for bad in ("sometimes", "always:3", "on-failure:x"):
        with pytest.raises(InvalidArgumentError, match="restart policy"):
            runopts.parse_restart(bad)


def test_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_SHELL", "shell value")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    path = tmp_path / "env"
    path.write_text('# comment\n\nA=1\nB="quoted stays"\nFROM_SHELL\nUNSET_HERE\nC=x=y\n')
    assert runopts.read_env_file(path) == {
        "A": "1",
        "B": '"quoted stays"',
        "FROM_SHELL": "shell value",
        "C": "x=y",
    }
    with pytest.raises(InvalidArgumentError, match=r"cannot read env file .*missing"):
        runopts.read_env_file(tmp_path / "missing")
    path.write_text("=novalue\n")
    with pytest.raises(InvalidArgumentError, match=":1: invalid variable"):
        runopts.read_env_file(path)


def test_options_apply_to_the_create_request() -> None:
    options = runopts.run_options(
        command=["-c", "echo"],
        publish=["127.0.0.1:8080:80"],
        volumes=["/srv:/srv:ro", "/anon"],
        user="1234:1234",
        workdir="/w",
        labels={"com.example": "x"},
        network="mynet",
        memory="1g",
        cpus=2,
        restart="on-failure:2",
    )
    config: dict[str, object] = {"HostConfig": {"NetworkMode": "none"}, "NetworkDisabled": True}
    options.apply(config)
    host = config["HostConfig"]
    assert host == {
        "NetworkMode": "mynet",
        "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
        "Binds": ["/srv:/srv:ro"],
        "Memory": 1 << 30,
        "NanoCpus": 2_000_000_000,
        "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
    }
    assert "NetworkDisabled" not in config
    assert config["Volumes"] == {"/anon": {}}
    assert config["ExposedPorts"] == {"80/tcp": {}}
    assert (config["User"], config["WorkingDir"], config["Cmd"]) == (
        "1234:1234",
        "/w",
        ["-c", "echo"],
    )


def test_option_conflicts() -> None:
    with pytest.raises(InvalidArgumentError, match="conflicts"):
        runopts.run_options(remove=True, restart="always")
    with pytest.raises(InvalidArgumentError, match="cannot be published on network 'none'"):
        runopts.run_options(publish=["80"], network="none")
    with pytest.raises(InvalidArgumentError, match="reserved"):
        runopts.run_options(labels={"io.docksnap.role": "app"})


def test_a_network_failure_at_start_gets_advice() -> None:
    """This project's engine has no docker0: the default bridge fails only at start."""
    from docksnap.service.container import _network_advice

    engine = "failed to create endpoint x on network bridge: could not find bridge docker0"
    assert "docker network create" in _network_advice(engine)
    assert _network_advice('exec: "nope": executable file not found in $PATH') == ""
