"""The test kit: loopback fakes of Discord and Slack, engine doubles, and the helpers that run a
real app and its real adapter against them.

- `discord.py`, `slack.py`: the platforms, served on 127.0.0.1 (the real libraries talk to them).
- `engines.py`: real `Engine`s with scripted text or a stopwatch.
- `hf_hub.py`: the Hugging Face Hub's file protocol (HEAD, redirect to a CDN, ranged GET).
- `projects.py`: persona files and the handbook library, written in a folder.
- `discord_env.py`, `slack_env.py`: a started app + adapter + fake, and what tests read from it.
- `platforms.py`: one driver per platform for the contract suite (tests/test_platform_contract.py).
- `waiting.py`: polling for positive checks.

No test module imports another; shared fixtures are in tests/conftest.py.
"""
