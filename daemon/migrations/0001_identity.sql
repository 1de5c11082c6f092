-- The device's own identity and free-form settings.
CREATE TABLE identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seed        BLOB    NOT NULL CHECK (length(seed) = 32),
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
