"""The local web workbench: chat, retrieval, evals and feedback (see `routes.mount_workbench`)."""
