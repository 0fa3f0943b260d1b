"""Image rules: ``images.allow``, ``images.require_digest``, ``images.local_builds`` (B9, B16, B22).

References are normalised with ``authz.classify.images.parse_reference`` and matched with
``pattern_matches``. Where each one comes from, read as the daemon reads it (moby 20.10):

* pull (``image:pull``): ``fromImage`` without one trailing ``:``, then the ``tag`` parameter:
  a valid digest replaces tag and digest (``WithDigest(TrimNamed(ref))``), anything else becomes
  the tag (``WithTag``, which keeps a digest of ``fromImage``). No tag at all pulls **every tag**
  of the repository: such a reference has neither tag nor digest, and no tag pattern matches it;
* push (``image:push``): the ``{name}`` path parameter plus ``tag``; no tag pushes every tag;
* container create: ``Image`` (and ``Mounts[].Source`` of ``Type: image``). The daemon looks a
  name up first and then as an image **ID or unique ID prefix**, so a bare hex string or
  ``sha256:…`` cannot be judged by name: only a role whose ``images.allow`` contains ``**`` may
  use one;
* service create/update: ``TaskTemplate.ContainerSpec.Image`` (services.py calls ``judge_image``).

``require_digest: true`` demands ``name@sha256:…`` on pull, create and service create/update.

Minting names (``image:tag``, ``image:load``, ``image:import``, ``container:commit``,
``image:build``) launders an image past the allowlist (a local image gets an allowed name), so
each needs ``images.local_builds: true``; the names minted where we can see them (tag/commit/
import ``repo``+``tag``, build ``t``) must also match ``images.allow``, so a role cannot
overwrite names other roles trust. Builds have further rules (B16, B22), each allowed only for
admin-like roles (``containers.unconfined`` and ``containers.host_namespaces`` true):
``remote=`` (the daemon fetches a URL or git repository), ``version=2`` or ``session=``
(BuildKit: the build runs over ``/session`` and gRPC, which authz never sees), ``networkmode``
``host`` or ``container:<ref>``, ``securityopt`` and ``cgroupparent`` (applied to every ``RUN``
container). Another ``networkmode`` is a network name and must pass ``networks.use``. The
``ulimits`` of the ``RUN`` containers may not raise ``rtprio`` for roles with CPU limits (see
``containers_limits``). An import
from a URL (``fromSrc`` other than ``-``) is an outbound request from the host: only roles
whose ``images.allow`` contains ``**``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from authz.classify.images import ImageReference, looks_like_image_id, parse_reference, pattern_matches
from authz.errors import RequestError
from authz.policy.rules import EvalContext, Violation, register
from authz.policy.rules.containers_limits import check_build_ulimits
from authz.policy.rules.networks import network_use_violations
from authz.policy.rules.references import admin_like_violation, allowed_text, body_missing

if TYPE_CHECKING:
    from authz.policy.compiled import EffectiveRole
    from authz.request import Operation, Subject

__all__ = ["describe", "judge_image", "minted_reference", "pull_reference", "push_reference"]

ANY_IMAGE = "**"
# go-digest: the algorithms the daemon registers, with the length of their lower-case hex.
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX = re.compile(r"[a-f0-9]+", re.ASCII)
_MINTING = {
    "image:tag": ("repo", "gives an existing local image a new name"),
    "image:load": ("body", "loads images named inside a tar file the plugin cannot see"),
    "image:import": ("fromSrc", "creates an image from a tar file"),
    "container:commit": ("repo", "creates an image from a container's filesystem"),
    "image:build": ("t", "builds from base images named in a Dockerfile the plugin cannot see"),
}


def _is_digest(text: str) -> bool:
    """``digest.Parse`` succeeds: a registered algorithm and hex of exactly its length."""
    algorithm, colon, encoded = text.partition(":")
    return bool(colon) and _DIGEST_HEX.get(algorithm) == len(encoded) and bool(_LOWER_HEX.fullmatch(encoded))


def _names_tag_or_digest(name: str) -> bool:
    """Whether a valid reference string carries a tag or digest (a port sits before the last /)."""
    return "@" in name or ":" in name.rsplit("/", 1)[-1]


def _with_tag(base: ImageReference, tag: str) -> ImageReference:
    """``reference.WithTag``: replaces the tag, keeps a digest; an invalid tag raises."""
    digest = f"@{base.digest}" if base.digest else ""
    return parse_reference(f"{base.name}:{tag}{digest}")


def _all_tags(base: ImageReference) -> ImageReference:
    return ImageReference(registry=base.registry, path=base.path, tag=None, digest=None)


def pull_reference(from_image: str, tag: str) -> ImageReference:
    """What ``PullImage(fromImage, tag)`` pulls; neither tag nor digest means every tag."""
    image = from_image.removesuffix(":")  # "pull -a" may send a trailing ":" (strings.TrimSuffix)
    base = parse_reference(image)
    if tag:
        if _is_digest(tag):
            return parse_reference(f"{base.name}@{tag}")
        return _with_tag(base, tag)
    return base if _names_tag_or_digest(image) else _all_tags(base)


def push_reference(name: str, tag: str) -> ImageReference:
    """What ``PushImage(name, tag)`` pushes; a name without tag pushes every tag."""
    base = parse_reference(name)
    if tag:
        return _with_tag(base, tag)  # push by digest does not exist: a digest here is refused
    return base if _names_tag_or_digest(name) else _all_tags(base)


def minted_reference(repo: str, tag: str) -> ImageReference:
    """The name tag/commit/import/build give an image (``latest`` when no tag is named)."""
    base = parse_reference(repo)
    if base.digest is not None:
        # The daemon refuses to create a tag with a digest (import/commit/build say so too).
        raise RequestError(f"invalid image name {repo!r}: a new image name cannot contain a digest")
    return _with_tag(base, tag) if tag else base


def describe(ref: ImageReference) -> str:
    if ref.tag is None and ref.digest is None:
        return f"{ref.name} (all tags)"
    if ref.tag is not None and ref.digest is not None:
        return f"{ref.name}:{ref.tag}@{ref.digest}"
    return ref.canonical


def _allowed(role: EffectiveRole, ref: ImageReference) -> bool:
    return any(pattern_matches(pattern, ref) for pattern in role.images.allow or ())


def _not_allowed(role: EffectiveRole, ref: ImageReference, field: str, what: str) -> Violation:
    return Violation(
        "images.allow",
        field,
        f"{what} {describe(ref)} is not allowed (allowed: {allowed_text(role.images.allow or ())})",
    )


def _unpinned(ref_text: str, field: str) -> Violation:
    return Violation(
        "images.require_digest",
        field,
        f"image {ref_text} must be pinned by digest (name@sha256:…) because images.require_digest is true",
    )


def judge_image(role: EffectiveRole, image: str, field: str) -> Iterator[Violation]:
    """Violations of the image a container (or service task) runs, named as in a create body."""
    allow = role.images.allow or ()
    if image == "":
        # Nothing to match; the daemon refuses it or falls back to something we cannot see.
        yield Violation("images.allow", field, "no image is named")
        return
    if looks_like_image_id(image):
        if ANY_IMAGE not in allow:
            yield Violation(
                "images.allow",
                field,
                f"image {image!r} may be resolved as a local image ID or ID prefix, which cannot be judged by "
                f"name; name the image instead (ID references need ** in images.allow; allowed: "
                f"{allowed_text(allow)})",
            )
        if role.images.require_digest:
            yield _unpinned(repr(image), field)
        return
    ref = parse_reference(image)
    if not _allowed(role, ref):
        yield _not_allowed(role, ref, field, "image")
    if role.images.require_digest and ref.digest is None:
        yield _unpinned(describe(ref), field)


@register("image:pull")
def check_pull(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    ref = pull_reference(operation.param("fromImage") or "", operation.param("tag") or "")
    if not _allowed(role, ref):
        yield _not_allowed(role, ref, "fromImage", "pulling")
    if role.images.require_digest and ref.digest is None:
        yield _unpinned(describe(ref), "fromImage")


@register("image:push")
def check_push(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    ref = push_reference(operation.target or "", operation.param("tag") or "")
    if not _allowed(role, ref):
        yield _not_allowed(role, ref, "name", "pushing")


@register("container:create")
def check_create_image(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view = operation.view
    if view is None:
        yield body_missing(operation.action, "images")
        return
    yield from judge_image(role, view.image, "Image")
    for index, mount in enumerate(view.mounts):
        if mount.type == "image":  # newer daemons mount an image's content: same allowlist
            yield from judge_image(role, mount.source, f"HostConfig.Mounts[{index}].Source")


def _minted(operation: Operation) -> Iterator[tuple[str, ImageReference]]:
    """(field, name) of every image name the operation creates that the plugin can see."""
    if operation.action == "image:build":
        for index, name in enumerate(operation.query.get("t", ())):
            yield f"t[{index}]", minted_reference(name, "")
        return
    if operation.action in ("image:tag", "container:commit", "image:import"):
        repo = operation.param("repo") or ""
        if repo or operation.action == "image:tag":  # commit/import without repo: an unnamed image
            yield "repo", minted_reference(repo, operation.param("tag") or "")


@register(*_MINTING)
def check_local_builds(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    field, what = _MINTING[operation.action]
    if not role.images.local_builds:
        yield Violation(
            "images.local_builds",
            field,
            f"{operation.action} {what}, a way to give an image a name images.allow would refuse; "
            f"it needs images.local_builds: true (role {role.name} has false)",
        )
        return
    for name_field, ref in _minted(operation):
        if not _allowed(role, ref):
            yield _not_allowed(role, ref, name_field, "the new image name")


@register("image:import")
def check_import_source(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    source = operation.param("fromSrc") or ""
    allow = role.images.allow or ()
    if source != "-" and ANY_IMAGE not in allow:
        yield Violation(
            "images.allow",
            "fromSrc",
            f"importing from {source!r} makes the daemon download it over the host's network; allowed only "
            f"when images.allow contains ** (allowed: {allowed_text(allow)})",
        )


@register("image:build")
def check_build_options(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    def admin_only(field: str, what: str) -> Iterator[Violation]:
        found = admin_like_violation(role, field, what)
        if found is not None:
            yield found

    remote = operation.param("remote") or ""
    if remote:
        yield from admin_only("remote", f"building from remote {remote!r} (the daemon fetches it itself)")
    version = operation.param("version") or ""
    if version not in ("", "1"):
        yield from admin_only("version", f"builder version={version} (BuildKit runs over /session and gRPC, unseen)")
    if operation.param("session"):
        yield from admin_only("session", "a build session (BuildKit runs over /session and gRPC, unseen)")
    if operation.param("cgroupparent"):
        yield from admin_only("cgroupparent", "cgroupparent for build containers")
    if operation.query.get("securityopt"):
        yield from admin_only("securityopt", "securityopt for build containers")
    yield from check_build_ulimits(role.containers, operation.param("ulimits"))
    network = operation.param("networkmode") or ""
    if network == "host" or network.startswith("container:"):
        yield from admin_only("networkmode", f"networkmode={network} for build containers")
    else:
        # RUN containers attach to this network: "" is the default network, like a create.
        yield from network_use_violations(role, subject, context, network or "default", "networkmode")
