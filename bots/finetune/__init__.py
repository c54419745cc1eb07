"""Graduating a persona: its conversations and feedback as training data, and a LoRA adapter."""
