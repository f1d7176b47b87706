"""PostgreSQL frontend/backend protocol v3, sans-io."""
