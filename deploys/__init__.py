"""One module per component; each exposes one @deploy function."""
