"""Who is asking: TLS client-certificate CNs and ``X-Authz-Token`` JWTs, resolved to a ``Subject``.

``resolve`` is pure (standard library only) and is what the core imports. ``token`` is the edge that
holds the Ed25519 keys and is the only module in the project that imports ``jwt``/``cryptography``;
it is deliberately not imported here, so importing this package never pulls pyjwt into the core.
"""

from __future__ import annotations

from authz.identity.resolve import TOKEN_HEADER, DirectoryIndex, identify

__all__ = ["TOKEN_HEADER", "DirectoryIndex", "identify"]
