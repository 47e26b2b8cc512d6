"""Streaming parsers of a model's reply: stop strings, thinking, tool calls, gpt-oss harmony channels."""
