"""Data: toy 2D samplers with exact densities (``ebm.data.toy``)."""
