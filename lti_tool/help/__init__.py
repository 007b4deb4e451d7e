"""The live help queue: requests, claims, sessions, chat, wait estimates."""
