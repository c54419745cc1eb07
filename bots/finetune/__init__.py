"""Graduating a persona: its conversations and feedback as training data (`bots export`), and a
LoRA adapter trained from them (`bots train`)."""
