"""Agent pool (Pi 5s): containerized agent instances."""

# Keys for this group are added by the component that reads them.
