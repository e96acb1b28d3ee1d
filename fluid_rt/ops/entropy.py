"""placeholder until the entropy family lands."""
__all__ = []
