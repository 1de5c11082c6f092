-- Albums, their two signed logs, keys, the local file index, peers, invites and activity.
-- Signed history is stored exactly as received (envelope bytes): it is re-verified on load, so a
-- damaged row is detected rather than trusted.

CREATE TABLE albums (
    album_id    BLOB PRIMARY KEY CHECK (length(album_id) = 32),
    path        TEXT,                       -- local folder; NULL while an invite is pending
    state       TEXT NOT NULL,              -- active | left | removed | deleted | declined
    joined_at   INTEGER NOT NULL
);

CREATE TABLE membership_entries (
    album_id    BLOB NOT NULL REFERENCES albums(album_id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    hash        BLOB NOT NULL,
    envelope    BLOB NOT NULL,
    PRIMARY KEY (album_id, seq, hash)       -- two hashes at one seq = a fork, kept as evidence
) WITHOUT ROWID;

CREATE TABLE statements (
    album_id    BLOB NOT NULL REFERENCES albums(album_id) ON DELETE CASCADE,
    hash        BLOB NOT NULL,
    envelope    BLOB NOT NULL,
    PRIMARY KEY (album_id, hash)
) WITHOUT ROWID;

CREATE TABLE manifest_entries (
    album_id    BLOB NOT NULL REFERENCES albums(album_id) ON DELETE CASCADE,
    author      BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    hash        BLOB NOT NULL,
    envelope    BLOB NOT NULL,
    PRIMARY KEY (album_id, author, seq, hash)
) WITHOUT ROWID;

CREATE TABLE epoch_keys (
    album_id    BLOB NOT NULL REFERENCES albums(album_id) ON DELETE CASCADE,
    epoch       INTEGER NOT NULL,
    key         BLOB NOT NULL CHECK (length(key) = 32),
    PRIMARY KEY (album_id, epoch)
) WITHOUT ROWID;

-- What is on disk in each album folder, and which manifest file each path holds.
CREATE TABLE local_files (
    album_id     BLOB NOT NULL REFERENCES albums(album_id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    inode        INTEGER NOT NULL,
    content_hash BLOB,
    file_author  BLOB,                     -- (file_author, file_id) of the manifest file, if any
    file_id      BLOB,
    entry_hash   BLOB,                     -- the manifest entry this copy matches
    file_key     BLOB,
    chunks       BLOB,                     -- encoded chunk list, to serve chunks by id
    state        TEXT NOT NULL,            -- synced | local_only | pending_publish
    PRIMARY KEY (album_id, path)
) WITHOUT ROWID;

CREATE TABLE chunk_index (
    album_id    BLOB NOT NULL,
    chunk_id    BLOB NOT NULL,
    path        TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    PRIMARY KEY (album_id, chunk_id)
) WITHOUT ROWID;

-- Downloads in progress: which chunks of the temp file are verified, so a restart resumes.
CREATE TABLE partials (
    album_id    BLOB NOT NULL,
    entry_hash  BLOB NOT NULL,
    done        BLOB NOT NULL,              -- bitmap of verified chunk indexes
    PRIMARY KEY (album_id, entry_hash)
) WITHOUT ROWID;

CREATE TABLE peers (
    device_id   TEXT PRIMARY KEY,
    public_key  BLOB,
    certificate BLOB,
    name        TEXT,
    last_seen   INTEGER
);

CREATE TABLE addresses (
    device_id   TEXT NOT NULL,
    address     TEXT NOT NULL,              -- tcp://host:port
    source      TEXT NOT NULL,              -- static | mdns | invite | seen
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (device_id, address)
);

CREATE TABLE invites_out (
    invite_id   BLOB PRIMARY KEY,
    album_id    BLOB NOT NULL REFERENCES albums(album_id) ON DELETE CASCADE,
    secret      BLOB NOT NULL,
    role        TEXT NOT NULL,
    message     TEXT NOT NULL,
    to_device   TEXT,                       -- set for a direct invite; NULL for a code
    expires_at  INTEGER NOT NULL,
    state       TEXT NOT NULL,              -- open | redeemed | cancelled | expired
    redeemed_by TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE invites_in (
    album_id    BLOB PRIMARY KEY,
    owner_device TEXT NOT NULL,
    owner_name  TEXT NOT NULL,
    album_name  TEXT NOT NULL,
    role        TEXT NOT NULL,
    message     TEXT NOT NULL,
    state       TEXT NOT NULL,              -- pending | accepted | declined
    received_at INTEGER NOT NULL
);

CREATE TABLE activity (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    album_id    BLOB,
    kind        TEXT NOT NULL,
    actor       TEXT,
    count       INTEGER NOT NULL DEFAULT 1,
    text        TEXT NOT NULL
);
CREATE INDEX activity_at ON activity (at);
