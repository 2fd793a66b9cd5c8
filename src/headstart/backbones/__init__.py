"""Backbones: transformers models built from configs (no download) or loaded from a directory."""
