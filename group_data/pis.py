"""Raspberry Pis (Raspberry Pi OS / Debian 12, arm64)."""

# Raspberry Pi OS ships memory cgroups off; the docker deploy adds them to this file's
# single line when the file exists, and reports that a reboot is needed.
pis_boot_cmdline_file = "/boot/firmware/cmdline.txt"
