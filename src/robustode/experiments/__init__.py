"""Experiments: presets and small studies that produce the papers' tables and ours."""
