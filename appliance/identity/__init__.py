"""Who is behind a connection: OIDC token validation, the device-flow login, and bindings."""
