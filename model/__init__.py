"""movierec core: data, index maps, the EmbeddingNet, the artifact format and the serving core.

Nothing in this package imports TorchServe, so it can be trained, tested and served anywhere.
"""
