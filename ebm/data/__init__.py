"""Data for both settings.

    ebm.data.toy        the toy 2D sets (and their D-dimensional rotated copies): seeded samplers, exact densities
    ebm.data.corpus     text corpora read as PyTorch's word_language_model reads them; vocabulary; lazy test split
    ebm.data.batching   batchify, bptt chunks and sentence batches
    ebm.data.layout     the held-out benchmark layout (train and validation never touch test.txt)
    ebm.data.synthetic  a Zipfian language with an exact entropy rate (a perplexity floor)
    ebm.data.download   named corpora, fetched once (python -m ebm.data.download NAME)
    ebm.data.token_cache  billion-token corpora as a memory-mapped int32 cache
"""

from ebm.data.corpus import Corpus, Vocabulary, load_corpus
from ebm.data.layout import heldout_layout
from ebm.data.synthetic import make_language, synthetic_corpus

__all__ = ["Corpus", "Vocabulary", "heldout_layout", "load_corpus", "make_language", "synthetic_corpus"]
