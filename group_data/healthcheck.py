"""Health checks only (Pi Zero, 512 MB): nothing heavy, no Docker."""

# 512 MB of RAM: no container engine here.
docker_enabled = False
