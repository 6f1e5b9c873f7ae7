"""Runs: the one owner of run folders and of checkpoint discovery and loading."""
