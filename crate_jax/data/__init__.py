"""Data: the corpus and other text sources, the tokenizer, token arrays and batch sampling."""
