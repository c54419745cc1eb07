"""Discord: the real discord.py client answering as the personas (see bot.py for the path)."""
