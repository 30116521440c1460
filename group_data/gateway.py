"""API gateway and public ingress (cloudflared): pi5-alpha."""

# Keys for this group are added by the component that reads them.
