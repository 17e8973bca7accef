"""Layer 1: models, definitions, replay and the ``Store`` protocol. No I/O libraries here."""
