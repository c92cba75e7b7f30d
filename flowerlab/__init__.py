"""Shared code for the flower classifier and image generator pipeline and its service."""
