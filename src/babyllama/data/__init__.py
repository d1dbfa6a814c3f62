"""Stage 1: corpora → cleaned text → BPE tokenizer → token files."""
