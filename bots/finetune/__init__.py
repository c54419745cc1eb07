"""Graduating a persona: its conversations and feedback as training data (`bots export`)."""
