"""placeholder until the commit family lands."""
__all__ = []
