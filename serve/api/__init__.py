"""The HTTP API: OpenAI Videos API shape plus videoserve's extensions."""
