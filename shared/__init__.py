"""Code that both stages import: the expert store, dataset manifests, configs, text utilities."""
__version__ = '0.1.0'
__all__ = ['__version__']
