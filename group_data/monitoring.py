"""Prometheus, Grafana and log aggregation: pi400-delta."""

# Keys for this group are added by the component that reads them.
