"""Slack: slack-bolt's async app answering as the personas (see app.py for the path)."""
