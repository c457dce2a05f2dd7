"""Exporters: turn a model or an artifact into another format."""
