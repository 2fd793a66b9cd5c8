"""Data modules: local files or text that ships with Python, tokenized once and cached."""
