"""Files that let other libraries load a saved bt2_hf model as their own (sentence-transformers)."""
