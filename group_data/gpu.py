"""NVIDIA GPU hosts (the Jetson): NVIDIA container toolkit, nvidia runtime for Docker."""

# Keys for this group are added by the component that reads them.
