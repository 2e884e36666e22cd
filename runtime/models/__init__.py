"""Models, tokenizers and heads from Hugging Face directories, and which model plays which part in a job."""
