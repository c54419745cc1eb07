"""Operating a running bot: logs (human or JSON, secrets masked), metrics, health."""
