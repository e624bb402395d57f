"""Sparse features: dictionaries over a model's MLPs (transcoders, SAEs), their quality, and training them."""

from logitlab.features.dictionary import DictionarySet, Transcoder
from logitlab.features.formats import load_dictionaries

__all__ = ["Transcoder", "DictionarySet", "load_dictionaries"]
