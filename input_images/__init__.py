"""The default gallery's photos, shipped as package data."""
