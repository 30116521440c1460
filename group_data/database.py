"""PostgreSQL, state and backups: pi5-gamma."""

# Keys for this group are added by the component that reads them.
