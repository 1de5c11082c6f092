-- Invite codes this device is redeeming: kept so that a restart before the owner's device answers
-- loses nothing (the code holds a secret; this file is 0600 like the device key it already holds).
CREATE TABLE redemptions (
    album_id   BLOB PRIMARY KEY,
    code       TEXT NOT NULL,
    path       TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
