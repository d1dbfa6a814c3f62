"""Stage 4: BLiMP-style minimal pairs, dev perplexity, (Super)GLUE / MSGS fine-tuning."""
