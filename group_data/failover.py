"""Failover: wildcard tunnel to a maintenance page, SSH jump host."""

# Keys for this group are added by the component that reads them.
