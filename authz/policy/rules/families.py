"""Imports every rule family so that each registers its checks (the engine imports this module)."""

from __future__ import annotations

from authz.policy.rules import containers  # noqa: F401 - registers container:create, container:update
from authz.policy.rules import exec as exec_rules  # noqa: F401 - registers container:exec
from authz.policy.rules import images as image_rules  # noqa: F401 - registers image:*, container:create/commit
from authz.policy.rules import networks as network_rules  # noqa: F401 - registers network:*, container:create
from authz.policy.rules import references as reference_rules  # noqa: F401 - registers container:create, network:*
from authz.policy.rules import services as service_rules  # noqa: F401 - registers service:create/update
from authz.policy.rules import volumes as volume_rules  # noqa: F401 - registers volume:create, container:create
