"""Data: the store snapshot training reads (``store``), the importers that fill the store
through the service's ingestion code (``importer``, ``ingest``, ``files``, MovieLens 100k and
1M), and the sequences and splits the trainers consume (``sequences``)."""
