"""Layer 3: worker, sink, client, command line and the embedded ``App``."""
