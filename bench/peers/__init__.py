"""Helper scripts the Raft benchmark runs as separate processes (peer members, load)."""
