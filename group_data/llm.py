"""LLM inference: the fleet's OpenAI-compatible endpoint on the port map's `llm` port."""

# Keys for this group are added by the component that reads them.
