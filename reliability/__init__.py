"""Helpers for the long reliability checks (kill/resume soak, load and fuzz runs)."""
