"""Image references normalised the way the daemon does, and policy patterns over them.

``parse_reference`` follows docker/distribution ``reference.ParseNormalizedNamed`` (v2.8.1, the
version moby v20.10.24 vendors) plus ``TagNameOnly``: ``tiny`` → ``docker.io/library/tiny:latest``,
``user/x`` → ``docker.io/user/x:latest``; the first path component is a registry only if it
contains ``.`` or ``:`` or is ``localhost``; ``index.docker.io`` is ``docker.io``; the repository
path must be lower case; a digest wins over a tag when the daemon looks the image up.

The daemon resolves ``Config.Image`` by name first and then as an image **ID or unique ID prefix**
(``ImageService.GetImage``), so ``looks_like_image_id`` tells callers when a name check is not
enough (bypass B9).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from authz.errors import RequestError

__all__ = ["ImageReference", "looks_like_image_id", "normalise_pattern", "parse_reference", "pattern_matches"]

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
NAME_TOTAL_LENGTH_MAX = 255

# docker/distribution reference/regexp.go, with Go's ASCII \w.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_NAME_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*"
_REFERENCE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_ANCHORED_NAME = re.compile(rf"(?:({_DOMAIN})/)?({_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*)", re.ASCII)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}", re.ASCII)
_HEX_PREFIX = re.compile(r"[a-f0-9]+", re.ASCII)
# go-digest: the algorithms the daemon binary registers, each with its lower-case hex length.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A normalised image reference. ``tag`` is ``None`` only when a digest was given alone."""

    registry: str  # "docker.io", "registry.example.com:5000", "localhost"
    path: str  # "library/tiny", "team/app"
    tag: str | None
    digest: str | None  # "sha256:<hex>"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.path}"

    @property
    def canonical(self) -> str:
        """``name@digest`` when there is a digest (the daemon looks that up), else ``name:tag``."""
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag}"

    @property
    def familiar(self) -> str:
        """What the docker CLI shows: ``tiny:latest``, ``user/x@sha256:…``, ``reg:5000/a/b:t``."""
        if self.registry == DEFAULT_DOMAIN:
            path = self.path.removeprefix(_OFFICIAL_PREFIX) if self.path.count("/") == 1 else self.path
            name = path
        else:
            name = self.name
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{name}{tag}{digest}"


def _split_domain(name: str) -> tuple[str, str]:
    """``splitDockerDomain``."""
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = _OFFICIAL_PREFIX + remainder
    return domain, remainder


def _check_digest(digest: str, ref: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    if _DIGEST_HEX_LENGTH.get(algorithm) != len(hex_part) or not _HEX_PREFIX.fullmatch(hex_part):
        raise RequestError(f"invalid image reference {ref!r}: unsupported or malformed digest {digest!r}")
    return digest


@functools.lru_cache(maxsize=1024)
def parse_reference(ref: str) -> ImageReference:
    """Normalise ``ref`` as the daemon does; an invalid reference raises ``RequestError``.

    Cached: hosts run the same few images over and over. Only valid references are kept (an
    exception is not cached), and those are at most a few hundred characters long.
    """
    if _IDENTIFIER.fullmatch(ref):
        raise RequestError(f"invalid image reference {ref!r}: a 64-hex string is an image ID, not a name")
    if ref.partition(":")[0] in _DIGEST_HEX_LENGTH:
        # ParseAnyReference reads "sha256:<hex>" as an image ID; as a name it would look like
        # docker.io/library/sha256 and could pass a library pattern.
        raise RequestError(f"invalid image reference {ref!r}: a digest names an image ID, not a name")
    domain, remainder = _split_domain(ref)
    remote = remainder.split(":", 1)[0]
    # This also refuses "Foo/bar", which newer distribution versions would read as registry "Foo".
    if remote.lower() != remote:
        raise RequestError(f"invalid image reference {ref!r}: repository name must be lowercase")
    full = f"{domain}/{remainder}"
    match = _REFERENCE.fullmatch(full)
    if match is None:
        raise RequestError(f"invalid image reference {ref!r}")
    name, tag, digest = match.group(1), match.group(2), match.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise RequestError(f"invalid image reference {ref!r}: name longer than {NAME_TOTAL_LENGTH_MAX}")
    name_match = _ANCHORED_NAME.fullmatch(name)
    if name_match is None or name_match.group(1) is None:  # cannot happen: we always add a domain
        raise RequestError(f"invalid image reference {ref!r}")
    if digest is not None:
        _check_digest(digest, ref)
    return ImageReference(
        registry=name_match.group(1),
        path=name_match.group(2),
        tag=tag if tag is not None else (None if digest else "latest"),
        digest=digest,
    )


def looks_like_image_id(ref: str) -> bool:
    """Whether the daemon may resolve ``ref`` as an image ID rather than (only) as a name.

    True for a full 64-hex ID, for ``sha256:``-prefixed strings, and for any bare lower-case hex
    string: the daemon tries it as a name and then as a unique ID prefix.
    """
    if ref.startswith("sha256:"):
        return True
    return bool(_HEX_PREFIX.fullmatch(ref))


def normalise_pattern(pattern: str) -> str:
    """A policy image pattern in normalised form: ``alpine`` → ``docker.io/library/alpine``.

    The registry rule of ``parse_reference`` applies to the first segment (``dev-*`` →
    ``docker.io/library/dev-*``). ``**`` alone, and a pattern of several segments whose first one
    holds a wildcard (``*/app``), are left as written: they range over registries too.
    """
    name, tag_or_digest = _split_pattern(pattern)
    first, slash, _ = name.partition("/")
    if name == "**" or (slash and "*" in first):
        return pattern
    domain, remainder = _split_domain(name)
    return f"{domain}/{remainder}{tag_or_digest}"


def _split_pattern(pattern: str) -> tuple[str, str]:
    """(name part, ``:tag``/``@digest`` suffix or "")."""
    at = pattern.find("@")
    if at >= 0:
        return pattern[:at], pattern[at:]
    colon = pattern.rfind(":")
    if colon > pattern.rfind("/"):
        return pattern[:colon], pattern[colon:]
    return pattern, ""


def _segment_regex(segment: str) -> str:
    if segment == "**":
        return r"[^/]+(?:/[^/]+)*"
    return "[^/]*".join(re.escape(part) for part in segment.split("*"))


def pattern_matches(pattern: str, ref: ImageReference) -> bool:
    """Whether ``ref`` matches a policy pattern such as ``docker.io/library/*`` (one segment),
    ``registry.example.com/team/**`` (one or more segments), ``…/app:1.*`` or ``…/app@sha256:…``.

    The pattern is normalised first (``normalise_pattern``). A tag in the pattern must match the
    reference's tag (a digest-only reference has none); a digest must be equal.
    """
    name_regex, digest, tag_regex = _compiled_pattern(pattern)
    if name_regex.fullmatch(ref.name) is None:
        return False
    if digest is not None:
        return ref.digest == digest
    if tag_regex is not None:
        return ref.tag is not None and tag_regex.fullmatch(ref.tag) is not None
    return True


@functools.lru_cache(maxsize=4096)
def _compiled_pattern(pattern: str) -> tuple[re.Pattern[str], str | None, re.Pattern[str] | None]:
    """(name regex, digest or None, tag regex or None) of a policy pattern: once per pattern, not
    once per create (patterns change only with the policy; the cache is bounded)."""
    name, suffix = _split_pattern(normalise_pattern(pattern))
    name_regex = re.compile("/".join(_segment_regex(segment) for segment in name.split("/")))
    if suffix.startswith("@"):
        return name_regex, suffix[1:], None
    if suffix.startswith(":"):
        return name_regex, None, re.compile(".*".join(re.escape(part) for part in suffix[1:].split("*")))
    return name_regex, None, None
