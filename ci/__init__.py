"""Nix image toolkit."""
