"""Dagster integration for Flokan's Image Editor API."""
