"""Stage 2: read expert stores, fit the retrieval models (MEE, CE, ...), evaluate, search."""
