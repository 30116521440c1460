"""PostgreSQL, Redis, state and backups: pi5-gamma."""

# The team's FastAPI backend (api.blackroad.io, on the gateway) keeps its data here.
postgres_databases = {
    "blackroad": {"owner": "api"},
}
postgres_roles = {
    "api": {"databases": ["blackroad"], "clients": ["gateway"]},
}
# Sessions, cache and rate limits of the same backend.
redis_users = {
    "api": {"clients": ["gateway"]},
}
