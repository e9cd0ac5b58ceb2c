"""mabert-hw: what a BERT-like model really costs, and what making it cheaper loses."""
