"""Cloud VMs (the droplet): no LAN of ours, reached over the tailnet."""

# Keys for this group are added by the component that reads them.

# The off-site copy: the fleet's backup repositories live here (deploys/backup_repository.py).
backup_repository_enabled = True
