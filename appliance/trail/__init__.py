"""Queries and views over the trail for operators; the signed hash-chained event store."""
