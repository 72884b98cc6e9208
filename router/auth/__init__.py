"""Who is asking: callers authenticated by mTLS (identity from the certificate) or a JWT
(verified against a JWKS), authorization by ``router.core.authz``, start quotas, and the
aggregated audit of denials. The gRPC edge (``router.api.auth``) wires them in front of
every RPC."""
