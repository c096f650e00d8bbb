"""Rebuilding the bundled models: the generated German→English corpus, the tokenizer, the
training recipes and the measurements written to each model's MODEL.md (`tracer train`)."""
