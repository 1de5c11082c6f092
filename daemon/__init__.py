"""The albumsync process: every side effect (disk, sockets, SQLite, clock, signals) lives here."""
