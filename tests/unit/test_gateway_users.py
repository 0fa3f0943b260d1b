"""The gateway's caller → authz user mapping (authz.gateway.users)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from authz.errors import ConfigError
from authz.gateway.users import ANONYMOUS, Identity, UserMap, UserMapFile, peer_credentials

PASSWD = {1000: "alice", 1001: "bob", 1002: "first.last", 1003: "Mallory", 1004: ANONYMOUS, 0: "root"}


def os_name(uid: int) -> str | None:
    return PASSWD.get(uid)


def resolve(user_map: UserMap, uid: int, **kw: bool) -> Identity:
    return user_map.resolve(uid, os_name, **kw)


def test_os_name_is_the_default() -> None:
    assert resolve(UserMap(), 1000) == Identity("alice", "os")
    assert resolve(UserMap(), 0) == Identity("root", "os")


def test_uid_without_passwd_entry_is_anonymous() -> None:
    assert resolve(UserMap(), 4242) == Identity(ANONYMOUS, "anonymous")
    assert resolve(UserMap(), 4242).anonymous


@pytest.mark.parametrize("uid", [1002, 1003, 1004])
def test_os_names_that_are_not_plain_logins_are_anonymous(uid: int) -> None:
    # "first.last" could equal a service's tls_cn; "Mallory" is not a default-policy login;
    # an OS account literally named "anonymous" stays the deny-everything CN
    assert resolve(UserMap(), uid).user == ANONYMOUS


def test_map_by_uid_wins_over_map_by_name_and_os_name() -> None:
    user_map = UserMap.parse("1000: alice-admin\nalice: alice-by-name\n", "map.yaml")
    assert resolve(user_map, 1000) == Identity("alice-admin", "map-uid")


def test_map_by_name() -> None:
    user_map = UserMap.parse("first.last: flast\nbob: robert\n", "map.yaml")
    assert resolve(user_map, 1002) == Identity("flast", "map-name")
    assert resolve(user_map, 1001) == Identity("robert", "map-name")
    assert resolve(user_map, 1000) == Identity("alice", "os")  # unmapped: OS fallback


def test_string_uid_keys_from_json() -> None:
    user_map = UserMap.parse('{"4242": "ci.example.com", "bob": "bob2"}', "map.json")
    assert resolve(user_map, 4242) == Identity("ci.example.com", "map-uid")
    assert resolve(user_map, 1001).user == "bob2"


def test_map_only_disables_os_fallback() -> None:
    user_map = UserMap.parse("bob: bob\n", "m")
    assert resolve(user_map, 1000, os_fallback=False).user == ANONYMOUS
    assert resolve(user_map, 1001, os_fallback=False).user == "bob"


def test_empty_document_is_an_empty_map() -> None:
    assert resolve(UserMap.parse("", "m"), 1000).user == "alice"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[alice]", "must be a mapping"),
        ("1000: alice\n'1000': bob\n", "duplicate key"),
        ("alice: a\nalice: b\n", "duplicate key"),
        ('{"1000": "a", "1000": "b"}', "duplicate key"),
        ("yes: alice\n", "boolean"),
        ("1000: 1234\n", "must be a string"),
        ("1000: ''\n", "1 to 64"),
        (f"1000: {'x' * 65}\n", "1 to 64"),
        ('1000: "al\\tice"\n', "control characters"),
        ("1000: anonymous\n", "reserved"),
        ("-1: alice\n", "out of range"),
        ("' bob': alice\n", "neither a uid"),
        ("4294967295: alice\n", "out of range"),
        ("1.5: alice\n", "neither a uid"),
        ("'': alice\n", "neither a uid"),
        ("1000: [alice]\n", "must be a string"),
        ("1000: alice: bob\n", "not valid YAML"),
    ],
)
def test_invalid_maps_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        UserMap.parse(text, "map.yaml")


def test_broken_map_makes_everyone_anonymous() -> None:
    broken = UserMap(by_uid={1000: "alice"}, broken="bad file")
    assert resolve(broken, 1000) == Identity(ANONYMOUS, "map-error")
    assert resolve(broken, 1001).user == ANONYMOUS


def _rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    later = time.time() + 5  # mtime granularity must not hide the change
    os.utime(path, (later, later))


def test_map_file_reloads_on_change_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("1000: first\n")
    mapped = UserMapFile(path)
    assert resolve(mapped.current(), 1000).user == "first"
    _rewrite(path, "1000: second\n")
    assert resolve(mapped.current(), 1000).user == "second"
    _rewrite(path, "1000: [not, a, name]\n")
    assert resolve(mapped.current(), 1000) == Identity(ANONYMOUS, "map-error")
    assert resolve(mapped.current(), 1001) == Identity(ANONYMOUS, "map-error")
    _rewrite(path, "1000: third\n")
    assert resolve(mapped.current(), 1000).user == "third"
    path.unlink()
    assert resolve(mapped.current(), 1000).user == ANONYMOUS


def test_map_file_must_be_valid_at_start(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("1000: anonymous\n")
    with pytest.raises(ConfigError, match="reserved"):
        UserMapFile(path)
    with pytest.raises(ConfigError):
        UserMapFile(tmp_path / "missing.yaml")


def test_peer_credentials_of_a_socketpair() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        creds = peer_credentials(left)
    assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.getuid(), os.getgid())
