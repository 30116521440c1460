"""LLM inference: the fleet's OpenAI-compatible endpoint on the port map's `llm` port."""

# Keys for this group are added by the component that reads them.

# The Ollama release's checksums (asset name -> SHA-256), for ollama_version in all.py.
# Copy them from https://github.com/ollama/ollama/releases/download/v<version>/sha256sum.txt
# when you set or bump the version: the bundle for the host's architecture, and on a Jetson
# the JetPack add-on (ollama-linux-arm64-jetpack6.tar.zst on L4T R36). Validation refuses an
# Ollama host without them; the deploy refuses a download that does not match.
ollama_sha256 = {}
