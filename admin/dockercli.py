"""A ``docker …`` command line → the Engine API requests docker CLI 28 sends for it, in order.

Supported: ``run``/``create`` (``admin.dockerrun``), ``ps``, ``exec``, ``pull``, ``push``,
``tag``, ``rm``, ``stop``, ``start``, ``restart``, ``kill``, ``images``, ``rmi``, ``version``,
``info``, ``network create|connect|rm|ls``, ``volume create|rm|ls`` (also as ``container …`` /
``image …``). The sequences follow the captures in docker-authz.md section 4 (``run`` = create →
attach → wait → start). Objects created on the way get a made-up id, recorded in ``creates`` so
the simulation can treat them as the caller's own in the later requests.

Anything not modelled (an unknown flag or sub-command) raises ``CommandError``: the simulator
answers only for requests it built exactly.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from admin.apicalls import ApiCall, fake_id, path, with_query
from admin.cliflags import CommandError, flags, parse
from admin.dockerobjects import network_command, volume_command
from admin.dockerrun import RUN_FLAGS, create_body
from authz.classify.images import parse_reference
from authz.errors import RequestError

__all__ = ["ApiCall", "CommandError", "translate"]

_GLOBAL = flags("-H,host= context= -c,config= -l,log-level= -D,debug tls tlsverify tlscacert= tlscert= tlskey=")
_ATTACH_HEADERS = {"Connection": "Upgrade", "Upgrade": "tcp", "Content-Type": "text/plain"}
_EXEC_FLAGS = flags("-d,detach -i,interactive -t,tty privileged -u,user= -w,workdir= -e,env=* detach-keys=")
_ALIASES = {("container", "run"): "run", ("container", "create"): "create", ("container", "ls"): "ps",
            ("container", "ps"): "ps", ("container", "list"): "ps", ("container", "exec"): "exec",
            ("container", "rm"): "rm", ("container", "stop"): "stop", ("container", "start"): "start",
            ("container", "restart"): "restart", ("container", "kill"): "kill", ("image", "pull"): "pull",
            ("image", "push"): "push", ("image", "tag"): "tag", ("image", "ls"): "images",
            ("image", "rm"): "rmi"}  # fmt: skip


def translate(command: str) -> list[ApiCall]:
    """The requests for ``command`` (``docker run --rm busybox true``); ``CommandError`` if unsupported."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise CommandError(f"cannot split the command line: {exc}") from None
    if argv and argv[0] == "docker":
        argv = argv[1:]
    _globals, rest = parse(argv, _GLOBAL, "", interspersed=False)
    if not rest:
        raise CommandError("no docker command given (e.g. docker run --rm busybox true)")
    name, args = rest[0], rest[1:]
    if name in ("container", "image") and args:
        key = (name, args[0])
        if key not in _ALIASES:
            raise CommandError(f"docker {name} {args[0]} is not supported by the simulator")
        name, args = _ALIASES[key], args[1:]
    handler = _COMMANDS.get(name)
    if handler is None:
        raise CommandError(
            f"docker {name} is not supported by the simulator (supported: {', '.join(sorted(_COMMANDS))})"
        )
    return handler(args)


def _run(args: list[str], create_only: bool = False) -> list[ApiCall]:
    command = "create" if create_only else "run"
    opts, rest = parse(args, RUN_FLAGS, command, interspersed=False)
    if not rest:
        raise CommandError(f"docker {command}: no image given")
    if create_only and opts["detach"]:
        raise CommandError("docker create: unsupported flag -d")
    image, cmd = rest[0], rest[1:]
    body = create_body(opts, image, cmd)
    name = opts["name"]
    params = [("name", name)] if name else []
    if opts["platform"]:
        params.append(("platform", opts["platform"]))
    cid = fake_id("container", name or "", image, *cmd)
    calls = [ApiCall("POST", with_query("/containers/create", params), body, creates=("container", cid, name),
                     what=f"create the container from {image}")]  # fmt: skip
    if create_only:
        return calls
    if not opts["detach"]:
        streams = [("stderr", "1"), ("stdout", "1"), ("stream", "1")]
        if opts["interactive"]:
            streams.append(("stdin", "1"))
        calls.append(ApiCall("POST", with_query(path("containers", cid, "attach"), streams), headers=_ATTACH_HEADERS,
                             what="attach to its output"))  # fmt: skip
    condition = "removed" if opts["rm"] else "next-exit"
    calls.append(ApiCall("POST", with_query(path("containers", cid, "wait"), [("condition", condition)]),
                         what="wait for it to end"))  # fmt: skip
    calls.append(ApiCall("POST", path("containers", cid, "start"), what="start it"))
    return calls


def _exec(args: list[str]) -> list[ApiCall]:
    opts, rest = parse(args, _EXEC_FLAGS, "exec", interspersed=False)
    if len(rest) < 2:
        raise CommandError("docker exec: give a container and a command")
    container, cmd = rest[0], rest[1:]
    detach = bool(opts["detach"])
    body = {
        "User": opts["user"] or "", "Privileged": bool(opts["privileged"]), "Tty": bool(opts["tty"]),
        "AttachStdin": bool(opts["interactive"]) and not detach, "AttachStderr": not detach,
        "AttachStdout": not detach, "Detach": detach, "DetachKeys": opts["detach_keys"] or "",
        "Env": list(opts["env"]) or None, "WorkingDir": opts["workdir"] or "", "Cmd": cmd,
    }  # fmt: skip
    eid = fake_id("exec", container, *cmd)
    calls = [
        ApiCall("GET", path("containers", container, "json"), what="inspect the container"),
        ApiCall("POST", path("containers", container, "exec"), body, creates=("exec", eid, None),
                what="create the exec instance"),
        ApiCall("POST", path("exec", eid, "start"), {"Detach": detach, "Tty": bool(opts["tty"])},
                headers={} if detach else {"Connection": "Upgrade", "Upgrade": "tcp"}, what="start it"),
    ]  # fmt: skip
    if not detach:
        calls.append(ApiCall("GET", path("exec", eid, "json"), what="read its exit code"))
    return calls


def _ps(args: list[str]) -> list[ApiCall]:
    opts, rest = parse(args, flags("-a,all -q,quiet -s,size -n,last= -l,latest --no-trunc"), "ps")
    if rest:
        raise CommandError(f"docker ps: unexpected argument {rest[0]!r}")
    params = [("all", "1")] if opts["all"] else []
    if opts["size"]:
        params.append(("size", "1"))
    if opts["last"] or opts["latest"]:
        params.append(("limit", opts["last"] or "1"))
    return [ApiCall("GET", with_query("/containers/json", params), what="list containers")]


def _reference(text: str, command: str) -> tuple[str, str]:
    """(repository name, tag) as the client sends them for pull/push/tag targets."""
    try:
        ref = parse_reference(text)
    except RequestError as exc:
        raise CommandError(f"docker {command}: {exc}") from None
    return ref.name, ref.digest or ref.tag or "latest"


def _familiar(name: str) -> str:
    return name.removeprefix("docker.io/").removeprefix("library/") if name.startswith("docker.io/") else name


def _pull(args: list[str]) -> list[ApiCall]:
    opts, rest = parse(args, flags("-q,quiet platform= -a,all-tags"), "pull")
    if len(rest) != 1 or opts["all_tags"]:
        raise CommandError("docker pull: give exactly one image (no --all-tags)")
    name, tag = _reference(rest[0], "pull")
    params = [("fromImage", name), ("tag", tag)] + ([("platform", opts["platform"])] if opts["platform"] else [])
    return [ApiCall("POST", with_query("/images/create", params), what=f"pull {name}:{tag}")]


def _push(args: list[str]) -> list[ApiCall]:
    _opts, rest = parse(args, flags("-q,quiet"), "push")
    if len(rest) != 1:
        raise CommandError("docker push: give exactly one image")
    name, tag = _reference(rest[0], "push")
    return [ApiCall("POST", with_query(f"/images/{_familiar(name)}/push", [("tag", tag)]), what=f"push {name}:{tag}")]


def _tag(args: list[str]) -> list[ApiCall]:
    _opts, rest = parse(args, (), "tag")
    if len(rest) != 2:
        raise CommandError("docker tag: give a source and a target image")
    name, tag = _reference(rest[1], "tag")
    path = with_query(f"/images/{quote(rest[0], safe=':/@')}/tag", [("repo", name), ("tag", tag)])
    return [ApiCall("POST", path, what=f"tag {rest[0]} as {name}:{tag}")]


Params = Callable[[dict[str, Any]], list[tuple[str, str]]]


def _each(
    method: str, template: Callable[[str], str], spec: str, command: str, params: Params = lambda _o: []
) -> Callable[[list[str]], list[ApiCall]]:
    def handler(args: list[str]) -> list[ApiCall]:
        opts, names = parse(args, flags(spec), command)
        if not names:
            raise CommandError(f"docker {command}: give at least one name")
        return [ApiCall(method, with_query(template(n), params(opts)), what=f"{command} {n}") for n in names]

    return handler


def _fixed(method: str, path: str, command: str) -> Callable[[list[str]], list[ApiCall]]:
    def handler(args: list[str]) -> list[ApiCall]:
        if args:
            raise CommandError(f"docker {command}: arguments are not supported by the simulator")
        return [ApiCall(method, path, what=command)]

    return handler


def _flagged(opts: dict[str, Any], *pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return [(query, "1") for dest, query in pairs if opts[dest]]


_COMMANDS: dict[str, Callable[[list[str]], list[ApiCall]]] = {
    "run": _run,
    "create": lambda args: _run(args, create_only=True),
    "exec": _exec,
    "ps": _ps,
    "pull": _pull,
    "push": _push,
    "tag": _tag,
    "rm": _each("DELETE", lambda n: path("containers", n), "-f,force -v,volumes -l,link", "rm",
                lambda o: _flagged(o, ("force", "force"), ("link", "link"), ("volumes", "v"))),
    "stop": _each("POST", lambda n: path("containers", n, "stop"), "-t,time= -s,signal=", "stop",
                  lambda o: [(k, o[d]) for d, k in (("signal", "signal"), ("time", "t")) if o[d] is not None]),
    "start": _each("POST", lambda n: path("containers", n, "start"), "", "start"),
    "restart": _each("POST", lambda n: path("containers", n, "restart"), "-t,time=", "restart",
                     lambda o: [("t", o["time"])] if o["time"] is not None else []),
    "kill": _each("POST", lambda n: path("containers", n, "kill"), "-s,signal=", "kill",
                  lambda o: [("signal", o["signal"])] if o["signal"] else []),
    "rmi": _each("DELETE", lambda n: f"/images/{quote(n, safe=':/@')}", "-f,force no-prune", "rmi",
                 lambda o: _flagged(o, ("force", "force"), ("no_prune", "noprune"))),
    "images": _fixed("GET", "/images/json", "images"),
    "version": _fixed("GET", "/version", "version"),
    "info": _fixed("GET", "/info", "info"),
    "network": network_command,
    "volume": volume_command,
}  # fmt: skip
