"""placeholder until the attention family lands."""
__all__ = []
