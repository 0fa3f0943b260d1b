"""The peer-credential gateway: a unix socket whose callers reach ``dockerd --tlsverify`` as themselves.

On ``/var/run/docker.sock`` the daemon tells an authorization plugin nothing about the caller; it
fills ``User`` only from a verified TLS client certificate's CN. The gateway reads the caller's
uid with ``SO_PEERCRED``, maps it to an authz user (``users``), and forwards the connection byte
for byte over TLS with a short-lived client certificate for that user (``proxy``, ``pump``),
signed by its own CA (``ca``, ``setup``). An edge: it may import ``cryptography`` and ``yaml``;
nothing in the core imports it.
"""

from __future__ import annotations

from authz.gateway.ca import CertificateAuthority, IssuedCert, validate_common_name
from authz.gateway.proxy import ClientContexts, ClientCredential, DaemonAddress, Gateway, bind_unix_socket
from authz.gateway.pump import Pump, PumpResult, tls_handshake
from authz.gateway.setup import SetupResult, dockerd_flags, setup_gateway, write_client_bundle
from authz.gateway.users import ANONYMOUS, Identity, PeerCredentials, UserMap, UserMapFile, peer_credentials

__all__ = [
    "ANONYMOUS",
    "CertificateAuthority",
    "ClientContexts",
    "ClientCredential",
    "DaemonAddress",
    "Gateway",
    "Identity",
    "IssuedCert",
    "PeerCredentials",
    "Pump",
    "PumpResult",
    "SetupResult",
    "UserMap",
    "UserMapFile",
    "bind_unix_socket",
    "dockerd_flags",
    "peer_credentials",
    "setup_gateway",
    "tls_handshake",
    "validate_common_name",
    "write_client_bundle",
]
