"""Neural networks with no optimal transport in them: velocity fields for flow matching."""

from .velocity import MLPVelocity, TimeEmbedding, UNetVelocity

__all__ = ["UNetVelocity", "MLPVelocity", "TimeEmbedding"]
