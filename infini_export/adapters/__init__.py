"""Adapters: third-party Infini-attention models wrapped as step modules (see ``infini_export.protocol``)."""
from .lucidrains import LucidrainsStep, build_lucidrains, load_lucidrains

__all__ = ["LucidrainsStep", "build_lucidrains", "load_lucidrains"]
