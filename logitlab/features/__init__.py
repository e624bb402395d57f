"""Sparse dictionaries (transcoders, SAEs) over a model's MLPs, and attribution graphs over their features."""

from logitlab.features.dictionary import DictionarySet, Transcoder

__all__ = ["DictionarySet", "Transcoder"]
