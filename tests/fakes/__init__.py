"""Test-only stand-ins for outside services (never imported by fleet/ or the deploys)."""
