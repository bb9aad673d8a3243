"""The OpenAI Files and Batches API's storage and scheduling: `store` (durable SQLite store of
files, batches and lines), `fair` (deficit round-robin between users), `jsonl` (line checks)."""
