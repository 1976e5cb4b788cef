"""Integrations of attnforge with frameworks (transformers)."""
