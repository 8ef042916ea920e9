"""The demo's data (SMS spam, see ATTRIBUTION.md): package data, read with importlib.resources."""
