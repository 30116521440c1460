"""Health checks only (Pi Zero, 512 MB): nothing heavy, no Docker."""

# Keys for this group are added by the component that reads them.
