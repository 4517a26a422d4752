"""Evaluation tasks (torch-free: numpy only)."""
