#!/usr/bin/env python3
"""SQLite storage of FiboSMS pushes: one row per SMS, durable before it is answered.

One table, ``messages``, a row per ``guid`` (columns in MIGRATIONS). The duplicate rule: a
delivery is one BEGIN IMMEDIATE transaction that tries the INSERT, and the UNIQUE constraint
decides: the first delivery inserts the row; a later one only counts itself (deliveries,
last_delivery_at), never overwriting it. 2 is answered only once COMMIT returned, with
synchronous=FULL (https://sqlite.org/pragma.html#pragma_synchronous), in WAL mode, or with the
rollback journal on a network filesystem (https://sqlite.org/wal.html). The data's folders and
files must be the user's own and closed to others. SQLite 3.7.17 (CentOS 7) or newer.
docs/AUDIT.md: what each promise rests on. ``python3 storage.py --help``: commands.py.
"""
import os
import sqlite3
import stat
import time

SCHEMA_VERSION = 2          # kept in PRAGMA user_version
BUSY_TIMEOUT = 5.0          # seconds a push waits for another writer, then is answered 1
CLAIM_SECONDS = 300.0       # a hook's claim; a crashed process's claim ends after this
MAX_HOOKS = 4               # hooks running at once on one database (live claims; hooks.py)
JOURNAL_MODES = ('wal', 'delete', 'truncate', 'persist')
# Filesystem types (as /proc/mounts names them) where WAL's shared memory does not work.
NETWORK_FILESYSTEMS = frozenset((
    'nfs', 'nfs4', 'cifs', 'smb3', 'smbfs', 'ncpfs', 'afs', '9p', 'ceph', 'glusterfs',
    'lustre', 'gpfs', 'fuse.sshfs', 'fuse.glusterfs', 'fuse.cephfs', 'davfs', 'fuse.s3fs'))

# Migration N takes a database from user_version N to N + 1. Append; never change what one does.
MIGRATIONS = ((
    """CREATE TABLE messages (
        id               INTEGER PRIMARY KEY,
        guid             TEXT NOT NULL UNIQUE CHECK (guid <> ''),  -- the gateway's id of the SMS
        phone            TEXT NOT NULL CHECK (phone <> ''),  -- the sender as received, trimmed
        phone_normalised TEXT,             -- international digits: 84912345678 (NULL: none)
        message          TEXT NOT NULL,    -- the SMS text ('' for an empty SMS)
        charset          TEXT NOT NULL,    -- how its bytes were read: utf-8, cp1258 or latin-1
        raw_query        TEXT NOT NULL,    -- the query (and POST body) less the secret, latin-1
        extra            TEXT NOT NULL DEFAULT '{}',  -- any other parameter, a JSON object
        remote_addr      TEXT,             -- the caller's address
        received_at      TEXT NOT NULL,    -- first delivery, UTC, ISO 8601
        deliveries       INTEGER NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
        last_delivery_at TEXT NOT NULL,    -- last delivery, UTC, ISO 8601
        state            TEXT NOT NULL     -- of the hook: processing, processed or failed
                         CHECK (state IN ('processing', 'processed', 'failed')),
        claimed_until    REAL,             -- while processing: when the claim ends (Unix time)
        hook_runs        INTEGER NOT NULL DEFAULT 0,  -- how many times the hook ran to an end
        last_error       TEXT,             -- why the hook last failed (its traceback)
        processed_at     TEXT              -- when the hook succeeded, UTC, ISO 8601
    )""",
    "CREATE INDEX messages_state ON messages (state)",
    "CREATE INDEX messages_received_at ON messages (received_at)",
), (  # 1 to 2: the inbox's pages of one phone (inbox.py), newest first
    "CREATE INDEX messages_phone ON messages (phone_normalised, received_at)",
))

SELECT_MESSAGE = "SELECT * FROM messages WHERE guid = ?"
# A plain INSERT, not INSERT OR IGNORE: OR IGNORE also skips a NOT NULL or CHECK failure
# without a word (https://sqlite.org/lang_conflict.html): a lost message answered 2.
INSERT_MESSAGE = """INSERT INTO messages (guid, phone, phone_normalised, message, charset,
    raw_query, extra, remote_addr, received_at, last_delivery_at, state, claimed_until,
    last_error, processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
COUNT_DELIVERY = """UPDATE messages SET deliveries = deliveries + 1, last_delivery_at = ?
    WHERE guid = ?"""
LIVE_CLAIMS = "SELECT count(*) FROM messages WHERE state = 'processing' AND claimed_until > ?"
CLAIM = "UPDATE messages SET state = 'processing', claimed_until = ? WHERE guid = ?"
MARK_PROCESSED = """UPDATE messages SET state = 'processed', claimed_until = NULL,
    last_error = NULL, hook_runs = hook_runs + 1, processed_at = ? WHERE guid = ?"""
MARK_FAILED = """UPDATE messages SET state = 'failed', claimed_until = NULL, last_error = ?,
    hook_runs = hook_runs + ? WHERE guid = ?"""
HOOKS_FULL = 'hook not started: %d hooks were running (storage.MAX_HOOKS); retried later'
MOVED = 'the database %s or its -wal or -shm file was moved, deleted or replaced in the push'


class StorageError(Exception):
    """The database cannot be used as this module requires (the reason is the message)."""


# -- Where the data may be --------------------------------------------------------------------

def prepare_place(path, create=True):
    """Check the database's folders and file, make what is missing (folders 0700, the file 0600
    O_EXCL|O_NOFOLLOW), return its path through its folder's real path (no link to re-point).
    A lone -wal or -journal would be played into a new database (howtocorrupt.html, 1.4)."""
    folder, missing = os.path.dirname(path), []
    while create and not os.path.lexists(folder):
        folder, missing = os.path.dirname(folder), missing + [folder]
    for new in reversed(missing):   # one by one: os.makedirs gives all but the last the umask
        try:
            os.mkdir(new, 0o700)
        except FileExistsError:     # made by another process meanwhile: checked below
            pass
        fsync_path(os.path.dirname(new))
    problem = folders_problem(os.path.dirname(path))
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    if not problem and not os.path.lexists(real):
        problem = 'no database at %s' % path if not create else next((
            '%s%s is there without its database: move it aside' % (path, end)
            for end in ('-wal', '-journal') if os.path.lexists(real + end)
            and not os.path.lexists(real)), None)  # not another process's new one meanwhile
        if not problem:
            try:
                os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o600))
                fsync_path(os.path.dirname(real))   # the new entry must survive a power cut
            except FileExistsError:     # made by another process meanwhile: checked below
                pass
    problem = problem or place_problem(real, 'file')
    if problem:
        raise StorageError(problem)
    return real


def folders_problem(folder):
    """What makes `folder` unfit for the data, or None: it must be the user's own, private, and
    all on the way to it root's or the user's: each folder above, none writable by others
    unless sticky (/tmp), each link, and the way to where each link points; else another local
    user could move the data away or re-point a link between two pushes."""
    return way_problem(folder, os.stat(folder)) or place_problem(os.path.realpath(folder),
                                                                 'folder')


def way_problem(path, data, depth=0):
    """What another user could change on the way to `path`; `data`: the data folder's stat."""
    for step in ancestors(path):
        st, mine = os.lstat(step), (0, os.geteuid())
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in mine or depth > 40:
                return 'the link %s belongs to uid %d, who can point it elsewhere' % (
                    step, st.st_uid)
            problem = way_problem(os.path.join(os.path.dirname(step), os.readlink(step)),
                                  data, depth + 1)
            if problem:
                return problem
        elif not os.path.samestat(st, data) and (st.st_uid not in mine or (
                st.st_mode & 0o022 and not st.st_mode & 0o1000)):
            return ('the folder %s above the data %s, who could move it away: put the data in'
                    ' a folder of yours' % (step, 'belongs to uid %d' % st.st_uid
                                            if st.st_uid not in mine else
                                            'is writable by group or others (mode %o)'
                                            % stat.S_IMODE(st.st_mode)))
    return None


def ancestors(path):               # `path`, then each folder above it
    while path != os.path.dirname(path):
        yield path
        path = os.path.dirname(path)
    yield path


def place_problem(path, kind):
    """What makes `path` unfit, or None: a real `kind` (no link), the user's own, private."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return 'the %s %s is a symbolic link' % (kind, path)
    if not (stat.S_ISDIR if kind == 'folder' else stat.S_ISREG)(st.st_mode):
        return 'the %s %s is not a %s' % (kind, path, 'directory' if kind == 'folder'
                                          else 'regular file')
    if st.st_uid != os.geteuid():
        return ('the %s %s belongs to uid %d, not to this user (uid %d): run as its owner'
                % (kind, path, st.st_uid, os.geteuid()))
    if st.st_mode & 0o077:
        return 'the %s %s is open to group or others (mode %o): chmod %s it' % (
            kind, path, stat.S_IMODE(st.st_mode), '700' if kind == 'folder' else '600')
    return None


def choose_journal(path, mounts='/proc/mounts'):
    """'wal' on a local filesystem, 'delete' (the rollback journal) on a network one."""
    return 'delete' if filesystem_type(path, mounts) in NETWORK_FILESYSTEMS else 'wal'


def filesystem_type(path, mounts='/proc/mounts'):
    """The type of the filesystem holding `path`, the longest mount point over it in
    /proc/mounts (the last such line wins); None where that cannot be read."""
    try:
        with open(mounts, encoding='utf-8', errors='replace') as f:
            lines = [line.split() for line in f.read().splitlines() if len(line.split()) > 2]
    except OSError:
        return None
    target, best, kind = os.path.realpath(os.path.dirname(os.path.abspath(path))), '', None
    for fields in lines:
        point = fields[1]   # proc(5): a space, tab, newline or backslash is octal-escaped
        for escape, char in (('\\040', ' '), ('\\011', '\t'), ('\\012', '\n'), ('\\134', '\\')):
            point = point.replace(escape, char)
        inside = target == point or target.startswith(point.rstrip('/') + '/')
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def fsync_path(path):
    """fsync(2) a file or a folder (so that a new entry in it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- Opening it -------------------------------------------------------------------------------

def connect(path, journal=None, create=True, check=True):
    """A connection to the database at `path`, its place checked (not with check=False: the
    commands report it), synchronous=FULL and the journal mode set and read back, the schema
    up to date. For one thread at a time, never in a forked child."""
    if journal is not None and journal not in JOURNAL_MODES:
        raise StorageError('journal mode %r is not one of %s' % (journal, ', '.join(JOURNAL_MODES)))
    path = prepare_place(os.path.abspath(path), create) if check else os.path.abspath(path)
    journal = journal or choose_journal(path)
    # No implicit transactions (Transaction says BEGIN and COMMIT); the threads of a server
    # take turns at one connection on connections.py's lock.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute('PRAGMA synchronous = FULL')
        if conn.execute('PRAGMA synchronous').fetchone()[0] != 2:
            raise StorageError('PRAGMA synchronous = FULL did not take')
        if conn.execute('PRAGMA journal_mode').fetchone()[0] != journal:
            got = conn.execute('PRAGMA journal_mode = ' + journal).fetchone()[0]
            if got != journal:      # journal is one of JOURNAL_MODES: safe to format in
                raise StorageError('PRAGMA journal_mode = %s gave %s' % (journal, got))
        if conn.execute('PRAGMA user_version').fetchone()[0] != SCHEMA_VERSION:
            with Transaction(conn):     # the migrations, in one transaction
                version = conn.execute('PRAGMA user_version').fetchone()[0]    # again, locked
                if version > SCHEMA_VERSION:
                    raise StorageError('database schema %d is newer than this code (%d)'
                                       % (version, SCHEMA_VERSION))
                for statement in sum(MIGRATIONS[version:], ()):
                    conn.execute(statement)
                conn.execute('PRAGMA user_version = %d' % SCHEMA_VERSION)
    except BaseException:
        conn.close()
        raise
    return conn


class Transaction:
    """``with Transaction(conn):`` BEGIN IMMEDIATE ... COMMIT (or ROLLBACK): the write lock at
    once, so no other writer comes between a read and the write after it."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute('BEGIN IMMEDIATE')
        return self.conn

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.conn.execute('COMMIT')
        elif self.conn.in_transaction:
            self.conn.execute('ROLLBACK')


class Once:
    """``with Once(path, journal) as conn:`` a CGI push's, held (not left to the garbage
    collector) and never closed: the process ends with os._exit, so SQLite neither checkpoints
    nor deletes -wal and -shm, and a push costs one fsync (connections.py: why closing is a
    trap; close=True: a server lacking it). Files moved, deleted or replaced fail the push."""
    held = []

    def __init__(self, path, journal=None, close=False):
        self.path, self.journal, self.close = os.path.abspath(path), journal, close

    def __enter__(self):
        self.conn = connect(self.path, self.journal)
        self.seen = files(self.path)
        return self.conn

    def __exit__(self, kind, value, tb):
        gone = moved(self.seen, files(self.path))
        if gone or not self.close:
            self.held.append(self.conn)
        else:
            self.conn.close()
        if gone and kind is None:
            raise StorageError(MOVED % self.path)


def files(path):
    """(device, inode) of the database, -wal and -shm (None: missing), and the database's
    size and change time, which no program can set back (cp -p and rsync -a set mtime)."""
    seen = []
    for end in ('', '-wal', '-shm'):
        try:
            st = os.stat(path + end)
            seen.append((st.st_dev, st.st_ino) + (() if end else (st.st_size, st.st_ctime_ns)))
        except FileNotFoundError:
            seen.append(None)
    return tuple(seen)


def moved(seen, now):
    """Whether a file of `seen` (see `files`) is gone, or another one, in `now`."""
    return [f and f[:2] for f in seen] != [f and f[:2] for f in now]


# -- Deliveries -------------------------------------------------------------------------------

def utc_iso(t=None):
    """Unix time `t` (default: now) as 2026-11-25T08:26:34.120Z"""
    t = time.time() if t is None else t
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t)) + '.%03dZ' % (t * 1000 % 1000)


def deliver(conn, push, claim_seconds=None):
    """Record one delivery of `push` (a dict of columns): ``(action, first)``, `first` the row
    stored first (None for a new guid); the action 'done' without a hook (`claim_seconds`
    None), else as `claim` says (a new message is claimed, or stored failed if 'full')."""
    now = time.time()
    stamp, hooked = utc_iso(now), claim_seconds is not None
    with Transaction(conn):
        full = hooked and conn.execute(LIVE_CLAIMS, (now,)).fetchone()[0] >= MAX_HOOKS
        try:
            # The insert first, and the UNIQUE constraint decides: a first delivery, the
            # common case, is one statement. A failed statement is undone alone and the
            # transaction goes on (https://sqlite.org/lang_conflict.html, ABORT).
            conn.execute(INSERT_MESSAGE, (
                push['guid'], push['phone'], push.get('phone_normalised'), push['message'],
                push['charset'], push['raw_query'], push.get('extra', '{}'),
                push.get('remote_addr'), stamp, stamp,
                'failed' if full else 'processing' if hooked else 'processed',
                now + claim_seconds if hooked and not full else None,
                HOOKS_FULL % MAX_HOOKS if full else None, None if hooked else stamp))
            return ('full' if full else 'run' if hooked else 'done'), None
        except sqlite3.IntegrityError:
            # UNIQUE, or NOT NULL or CHECK? SQLite words it differently by version ("column
            # guid is not unique" in 3.7.17): a row with this guid means a later delivery.
            row = conn.execute(SELECT_MESSAGE, (push['guid'],)).fetchone()
            if row is None:
                raise
        conn.execute(COUNT_DELIVERY, (stamp, push['guid']))
        return ('done' if not hooked else claim(conn, row, now, claim_seconds, full)), dict(row)


def claim(conn, row, now, seconds, full=False):
    """In a transaction: claim `row` for a hook run ('run'), or say 'done' (its hook
    succeeded), 'busy' (another live claim: its hook runs), 'full' (MAX_HOOKS run)."""
    if row['state'] == 'processed':
        return 'done'
    if row['state'] == 'processing' and (row['claimed_until'] or 0) > now:
        return 'busy'
    if full:
        return 'full'
    conn.execute(CLAIM, (now + seconds, row['guid']))
    return 'run'


def record(conn, guid, error=None, ran=True):
    """In a transaction: the hook on `guid` ended with `error` (a traceback) or none (or,
    ran=False, did not start)."""
    if error is None:
        conn.execute(MARK_PROCESSED, (utc_iso(), guid))
    else:
        conn.execute(MARK_FAILED, (error, int(ran), guid))


if __name__ == '__main__':
    import commands
    raise SystemExit(commands.main())
