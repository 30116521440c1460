"""Cloud VMs (the droplet): no LAN of ours, reached over the tailnet."""

# Keys for this group are added by the component that reads them.
