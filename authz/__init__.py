"""docker-authz: a role-based authorization plugin for the Docker Engine.

The core (everything under ``authz`` except ``server``, ``storage``, ``cli`` and
``identity.token``) imports only the standard library; see docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
