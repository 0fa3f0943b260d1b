"""One exception tree for the whole plugin.

::

    AuthzError                      base of everything we raise on purpose
    ├── RequestError                the daemon's request cannot be read exactly as the daemon would
    │   ├── RouteError              method/path is not a known Engine API route
    │   └── BodyError               body missing, oversized, not JSON, ambiguous JSON …
    ├── IdentityError               token invalid/expired/revoked, TLS and token disagree …
    ├── PolicyError                 a policy document is invalid; carries the key path
    ├── StoreError                  the database failed (SQLAlchemy errors are translated to this)
    └── ConfigError                 the plugin is misconfigured (settings, paths, keys)

At the daemon edge (``decide.Authorizer``) every exception, ours or not, becomes a deny.
"""

from __future__ import annotations


class AuthzError(Exception):
    """Base class of every error the plugin raises on purpose."""


class RequestError(AuthzError):
    """The request cannot be classified exactly as the daemon would: deny."""


class RouteError(RequestError):
    """Method and path match no Engine API route we know."""


class BodyError(RequestError):
    """The request body is missing, too large, not JSON, or ambiguous."""


class IdentityError(AuthzError):
    """The caller's identity cannot be established or is contradictory."""


class PolicyError(AuthzError):
    """A policy document is invalid. ``path`` names the offending key (``roles.dev.allow[2]``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class StoreError(AuthzError):
    """The policy/audit store failed."""


class ConfigError(AuthzError):
    """The plugin is misconfigured."""
