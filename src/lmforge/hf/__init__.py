"""Hugging Face ``transformers`` interop: import and export GPT-2 and Llama checkpoints."""
