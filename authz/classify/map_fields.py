"""Where a request body holds Go maps, by action: the ``maps`` paths of ``authz.gojson.loads``.

Go's ``encoding/json`` matches a struct's fields case-insensitively and folds some non-ASCII
letters onto ASCII ones, so an object the daemon decodes into a struct must have keys that are
ASCII and distinct case-insensitively, or the plugin refuses it. An object it decodes into a
``map[string]…`` keeps every key exactly as sent, in Go as in Python: ``--label café=1``,
``--label Team=a --label team=b`` or ``-v /données`` are ordinary there. These are those maps, from
the API types of the daemon (moby ``api/types``): paths lower-cased, ``.`` between struct fields,
``[]`` for an array's elements, ``*`` for a map's values. A path missing here only makes the plugin
stricter than the daemon (a denial that says which keys), never laxer.
"""

from __future__ import annotations

from authz.actions import Action as A

__all__ = ["MAP_FIELDS"]

# container.HostConfig (with its embedded Resources): the maps among its fields.
_HOST_CONFIG = (
    "portbindings",  # nat.PortMap
    "logconfig.config",
    "storageopt",
    "tmpfs",
    "sysctls",
    "annotations",
    "mounts[].volumeoptions.labels",
    "mounts[].volumeoptions.driverconfig.options",
    "devicerequests[].options",
)
_ENDPOINT = ("driveropts",)  # network.EndpointSettings

_CONTAINER_CREATE = frozenset(
    (
        # container.Config
        "exposedports",  # nat.PortSet
        "volumes",
        "labels",
        # HostConfig, and its fields at the top level (the embedded HostConfig of API < 1.44, B5)
        *_HOST_CONFIG,
        *(f"hostconfig.{path}" for path in _HOST_CONFIG),
        "networkingconfig.endpointsconfig",
        *(f"networkingconfig.endpointsconfig.*.{path}" for path in _ENDPOINT),
    )
)

MAP_FIELDS: dict[str, frozenset[str]] = {
    A.CONTAINER_CREATE: _CONTAINER_CREATE,
    A.CONTAINER_UPDATE: frozenset(("devicerequests[].options",)),  # container.UpdateConfig's Resources
    A.VOLUME_CREATE: frozenset(("driveropts", "labels")),  # volume.CreateOptions
    # types.NetworkCreateRequest and its IPAM
    A.NETWORK_CREATE: frozenset(("options", "labels", "ipam.options", "ipam.config[].auxiliaryaddresses")),
    A.NETWORK_CONNECT: frozenset(f"endpointconfig.{path}" for path in _ENDPOINT),
    # swarm.ServiceSpec (Annotations embedded), its ContainerSpec, networks and log driver
    A.SERVICE_CREATE: frozenset(
        (
            "labels",
            "tasktemplate.containerspec.labels",
            "tasktemplate.containerspec.sysctls",
            "tasktemplate.containerspec.mounts[].volumeoptions.labels",
            "tasktemplate.containerspec.mounts[].volumeoptions.driverconfig.options",
            "tasktemplate.logdriver.options",
            "tasktemplate.networks[].driveropts",
            "networks[].driveropts",
        )
    ),
    # swarm.SecretSpec / swarm.ConfigSpec (Annotations embedded)
    A.SECRET_CREATE: frozenset(("labels", "driver.options", "templating.options")),
    A.CONFIG_CREATE: frozenset(("labels", "templating.options")),
}
MAP_FIELDS[A.SERVICE_UPDATE] = MAP_FIELDS[A.SERVICE_CREATE]
MAP_FIELDS[A.SECRET_UPDATE] = MAP_FIELDS[A.SECRET_CREATE]
MAP_FIELDS[A.CONFIG_UPDATE] = MAP_FIELDS[A.CONFIG_CREATE]
