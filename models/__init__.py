"""Neural networks with no optimal transport in them: velocity fields, autoencoder, classifier."""

from .autoencoder import ConvAutoencoder
from .velocity import MLPVelocity, TimeEmbedding, UNetVelocity

__all__ = ["UNetVelocity", "MLPVelocity", "TimeEmbedding", "ConvAutoencoder"]
