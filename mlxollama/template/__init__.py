"""The Go text/template interpreter and Ollama's rules for executing a model's TEMPLATE."""
