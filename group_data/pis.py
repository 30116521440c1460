"""Raspberry Pis (Raspberry Pi OS / Debian 12, arm64)."""

# Keys for this group are added by the component that reads them.
