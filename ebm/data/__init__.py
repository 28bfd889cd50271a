"""Data: toy 2D samplers with exact densities (``ebm.data.toy``)."""

# Text corpora and the synthetic Zipfian language with an exact entropy rate (``ebm.data.corpus``, ``.synthetic``).
from ebm.data.corpus import Corpus, Vocabulary, load_corpus  # noqa: E402
from ebm.data.synthetic import make_language, synthetic_corpus  # noqa: E402

__all__ = ["Corpus", "Vocabulary", "load_corpus", "make_language", "synthetic_corpus"]
