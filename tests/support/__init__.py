"""Shared test support (no tests here): paths, policy document builders and checks, the admin
CLI and broker test environments."""
