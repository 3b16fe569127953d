#!/usr/bin/env python3
"""Durable SQLite storage for FiboSMS pushes, and the operator's command line.

One table, ``messages``, one row per SMS, keyed by the gateway's ``guid``::

    guid              TEXT NOT NULL UNIQUE  the gateway's id of the SMS
    phone             TEXT NOT NULL         the sender, as received (trimmed)
    phone_normalised  TEXT                  international digits: 84912345678
    message           TEXT NOT NULL         the SMS text ('' for an empty SMS)
    charset           TEXT NOT NULL         how the bytes were decoded: utf-8, cp1258, latin-1
    raw_query         TEXT NOT NULL         the query string (and POST body) as received,
                                            without the token; .encode('latin-1') gives the bytes
    extra             TEXT NOT NULL         other parameters, a JSON object
    remote_addr       TEXT                  the caller's address
    received_at       TEXT NOT NULL         first delivery, UTC, ISO 8601
    deliveries        INTEGER NOT NULL      how many times the gateway sent it
    last_delivery_at  TEXT NOT NULL         last delivery, UTC, ISO 8601
    state             TEXT NOT NULL         processing, processed or failed (the hook's state)
    claimed_until     REAL                  while 'processing': when the claim expires (Unix time)
    hook_runs         INTEGER NOT NULL      how many times the hook ran to an end
    last_error        TEXT                  the hook's last traceback
    processed_at      TEXT                  when the message was processed, UTC, ISO 8601

The duplicate rule: the first delivery of a guid inserts the row; every later one only counts
itself (``deliveries``, ``last_delivery_at``) and never overwrites what was stored first. Each
delivery tries the insert in one ``BEGIN IMMEDIATE`` transaction and the UNIQUE constraint
decides: a delivery whose insert it refuses is a later one.

Durability: a delivery is answered ``<Status>2</Status>`` only after its ``COMMIT`` returned
with ``PRAGMA synchronous=FULL`` (https://sqlite.org/pragma.html#pragma_synchronous). The
journal is WAL on local disks and the rollback journal on network filesystems, where WAL does
not work (https://sqlite.org/wal.html, "WAL does not work over a network filesystem").

SQLite 3.7.17 or newer: nothing here uses UPSERT, RETURNING or other later additions.

Command line (``python3 storage.py --help``)::

    python3 storage.py [--db PATH] list | show GUID | stats | retry [--handler module:function]
        | export [--format csv|jsonl] [--since TIMESTAMP] | backup DEST
        | purge --older-than DAYS [--include-failed] [--dry-run]
        | check [--max-silence HOURS] [--quiet]

``retry`` runs FIBOSMS_HANDLER's hook, or forwards (FIBOSMS_FORWARD_URL and _SECRET).
"""
import os
import sys
import time

# The C module that the sqlite3 package re-exports: the same connect, Row and exceptions.
# The package adds only the DB-API's date and time helpers, never used here, and imports
# datetime for them: some 2 ms of every CGI push.
import _sqlite3 as sqlite3

# -- Settings ---------------------------------------------------------------------------------

SCHEMA_VERSION = 1            # kept in PRAGMA user_version
BUSY_TIMEOUT = 5.0            # seconds to wait for another writer before giving up (answer 1)
CLAIM_SECONDS = 300.0         # a hook claim left behind by a crashed process expires after this
MIN_SQLITE = (3, 7, 17)       # the oldest SQLite this file is written for (CentOS 7)
JOURNAL_MODES = ('wal', 'delete', 'truncate', 'persist')
# Filesystem types (as /proc/mounts names them) on which WAL's shared memory does not work.
NETWORK_FILESYSTEMS = frozenset((
    'nfs', 'nfs4', 'cifs', 'smb3', 'smbfs', 'ncpfs', 'afs', '9p', 'ceph', 'glusterfs',
    'lustre', 'gpfs', 'fuse.sshfs', 'fuse.glusterfs', 'fuse.cephfs', 'davfs', 'fuse.s3fs',
))

# Migration N takes a database from user_version N to N + 1. Append, never edit.
MIGRATIONS = (
    (
        """CREATE TABLE messages (
            id               INTEGER PRIMARY KEY,
            guid             TEXT NOT NULL UNIQUE CHECK (guid <> ''),
            phone            TEXT NOT NULL CHECK (phone <> ''),
            phone_normalised TEXT,
            message          TEXT NOT NULL,
            charset          TEXT NOT NULL,
            raw_query        TEXT NOT NULL,
            extra            TEXT NOT NULL DEFAULT '{}',
            remote_addr      TEXT,
            received_at      TEXT NOT NULL,
            deliveries       INTEGER NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
            last_delivery_at TEXT NOT NULL,
            state            TEXT NOT NULL
                             CHECK (state IN ('processing', 'processed', 'failed')),
            claimed_until    REAL,
            hook_runs        INTEGER NOT NULL DEFAULT 0,
            last_error       TEXT,
            processed_at     TEXT
        )""",
        "CREATE INDEX messages_state ON messages (state)",
        "CREATE INDEX messages_received_at ON messages (received_at)",
    ),
)

SELECT_MESSAGE = "SELECT * FROM messages WHERE guid = ?"
# A plain INSERT, not INSERT OR IGNORE: OR IGNORE also skips NOT NULL and CHECK failures
# silently (https://sqlite.org/lang_conflict.html), and we would answer 2 for a lost message.
INSERT_MESSAGE = """INSERT INTO messages (guid, phone, phone_normalised, message, charset,
    raw_query, extra, remote_addr, received_at, last_delivery_at, state, claimed_until,
    processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
COUNT_DELIVERY = """UPDATE messages SET deliveries = deliveries + 1, last_delivery_at = ?
    WHERE guid = ?"""
CLAIM = "UPDATE messages SET state = 'processing', claimed_until = ? WHERE guid = ?"
MARK_PROCESSED = """UPDATE messages SET state = 'processed', claimed_until = NULL,
    last_error = NULL, hook_runs = hook_runs + 1, processed_at = ? WHERE guid = ?"""
MARK_FAILED = """UPDATE messages SET state = 'failed', claimed_until = NULL,
    last_error = ?, hook_runs = hook_runs + 1 WHERE guid = ?"""
SELECT_RETRYABLE = """SELECT guid FROM messages
    WHERE state = 'failed' OR (state = 'processing' AND claimed_until < ?) ORDER BY id"""


class StorageError(Exception):
    """The database cannot be used as this module requires (the reason is the message)."""


# -- Opening a database -----------------------------------------------------------------------

def default_path():
    """The default database: in the running user's home, never in the web root."""
    return os.path.join(os.path.expanduser('~'), '.fibosms', 'messages.sqlite3')


def connect(path, journal=None, timeout=BUSY_TIMEOUT, create=True, private=True):
    """Open `path` ready for use: its place checked, durable settings checked, schema up to date.

    The file and its folder must be the running user's own and private (`place_problem`);
    a missing folder is made 0700 and a missing file 0600 (SQLite gives its -wal, -shm and
    -journal files the database file's permissions). Each caller gets its own connection,
    which must not be used by two threads at once nor in a forked child.
    """
    if journal is not None and journal not in JOURNAL_MODES:
        raise StorageError('journal mode %r is not one of %s'
                           % (journal, ', '.join(JOURNAL_MODES)))
    path = prepare_place(os.path.abspath(path), create, private)
    if journal is None:
        journal = choose_journal(path)
    # isolation_level=None: no implicit transactions; we BEGIN and COMMIT ourselves.
    # check_same_thread=False: a server's threads take turns at one kept connection, under
    # the lock of Connections, never two at once.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        configure(conn, journal)
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def diagnose(path):
    """What the filesystem says is wrong for `path`, as '; ...' to add to an error, or ''.

    SQLite names neither a read-only filesystem ('unable to open database file') nor a full
    one ('disk I/O error' when its -shm file cannot grow), so the operator is told here.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fs = os.statvfs(directory)
    except OSError:
        return ''
    if fs.f_flag & os.ST_RDONLY:
        return '; the filesystem holding %s is read-only' % directory
    if fs.f_bavail * fs.f_frsize < 1 << 16:     # less than a few pages of SQLite's
        return '; no space left on the filesystem holding %s' % directory
    for name in (directory, path):
        if os.path.exists(name) and not os.access(name, os.W_OK):
            return '; %s is not writable by this user' % name
    return ''


def prepare_place(path, create=True, private=True):
    """Check the database's folders and file, creating what is missing; return the path to
    open: the same file by its folder's real path, so that no link on the way can be pointed
    elsewhere between these checks and SQLite's open (SQLite opens -wal and -journal by name
    beside it, so they too stay in the checked folder).

    Each missing folder is made 0700 (os.makedirs would give the ones above the last the
    umask's mode, 0777 under umask 000). A new file is made 0600 with O_EXCL|O_NOFOLLOW, so
    that a link planted at its name is never followed. A -wal or -journal file found where no
    database is would be played into the new one by SQLite (https://sqlite.org/howtocorrupt.html,
    section 1.4): refused, to be moved aside with the database it belongs to.
    `private=False` (the operator's command line, which reports these itself) checks nothing.
    """
    directory = os.path.dirname(path)
    if not os.path.lexists(directory):
        if not create:
            raise StorageError('no database at %s' % path)
        missing = []
        while not os.path.lexists(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:  # made by another process meanwhile: checked below
                pass
        fsync_path(directory)
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    problem = private and folders_problem(os.path.dirname(real))
    if problem:
        raise StorageError(problem)
    if not os.path.lexists(real):
        if not create:
            raise StorageError('no database at %s' % path)
        for suffix in ('-wal', '-journal'):
            if os.path.lexists(real + suffix):
                raise StorageError('%s%s is there without its database: move it aside'
                                   % (path, suffix))
        try:
            os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600))
            fsync_path(os.path.dirname(real))  # the new entry must survive a power cut
        except FileExistsError:  # made by another process meanwhile: checked below
            pass
    problem = private and place_problem(real, 'file')
    if problem:
        raise StorageError(problem)
    return real


def folders_problem(folder):
    """What makes the real path `folder` unfit to hold the database, or None: it must be the
    running user's own and closed to group and others (`place_problem`), and every folder
    above it root's or the running user's, writable by no one else unless sticky (as /tmp),
    so that no other local user can move the database's folder away and put theirs there."""
    problem = place_problem(folder, 'folder')
    while not problem and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
        st = os.stat(folder)
        if st.st_uid not in (0, os.geteuid()):
            problem = ('the folder %s above the database belongs to uid %d, who could move'
                       ' the database away: put it in a folder of yours' % (folder, st.st_uid))
        elif st.st_mode & 0o022 and not st.st_mode & 0o1000:
            problem = ('the folder %s above the database is writable by group or others'
                       ' (mode %o), who could move the database away: put it in a folder'
                       ' of yours' % (folder, st.st_mode & 0o7777))
    return problem


def place_problem(path, kind):
    """What makes `path` unfit to hold the messages, or None: it must be a real `kind` ('file'
    or 'folder'), the running user's own, closed to group and others, so that another local
    user cannot plant the database, read it, or redirect it (a symlink to a file of theirs)."""
    import stat
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return 'the database %s %s is a symbolic link' % (kind, path)
    if not (stat.S_ISDIR if kind == 'folder' else stat.S_ISREG)(st.st_mode):
        return 'the database %s %s is not a %s' % (
            kind, path, 'directory' if kind == 'folder' else 'regular file')
    if st.st_uid != os.geteuid():
        return ('the database %s %s belongs to uid %d, not to this user (uid %d): run as its'
                ' owner' % (kind, path, st.st_uid, os.geteuid()))
    if st.st_mode & 0o077:
        return 'the database %s %s is open to group or others (mode %o): %s' % (
            kind, path, stat.S_IMODE(st.st_mode),
            'give it a folder of its own, mode 700' if kind == 'folder' else 'chmod 600 it')
    return None


def configure(conn, journal):
    """Set synchronous=FULL and the journal mode, and read both back: a setting that did not
    take (an old or odd SQLite, a read-only file) must stop us, not be assumed."""
    conn.execute('PRAGMA synchronous = FULL')
    if conn.execute('PRAGMA synchronous').fetchone()[0] != 2:
        raise StorageError('PRAGMA synchronous = FULL did not take')
    if conn.execute('PRAGMA journal_mode').fetchone()[0] != journal:
        # journal is one of JOURNAL_MODES (checked by the caller), so it is safe to format in.
        got = conn.execute('PRAGMA journal_mode = %s' % journal).fetchone()[0]
        if got != journal:
            raise StorageError('PRAGMA journal_mode = %s gave %s' % (journal, got))


def choose_journal(path, mounts='/proc/mounts'):
    """'wal' on a local filesystem, 'delete' (the rollback journal) on a network one."""
    return 'delete' if filesystem_type(path, mounts) in NETWORK_FILESYSTEMS else 'wal'


def filesystem_type(path, mounts='/proc/mounts'):
    """The type of the filesystem holding `path`, from /proc/mounts; None where it is not known."""
    try:
        with open(mounts, encoding='utf-8', errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:  # not Linux: nothing to tell by
        return None
    target = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    best, best_type = '', None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = unescape_mount(fields[1])
        inside = target == point or target.startswith(point.rstrip('/') + '/')
        if inside and len(point) >= len(best):  # the last, longest mount point wins
            best, best_type = point, fields[2]
    return best_type


def unescape_mount(field):
    """/proc/mounts writes a space, tab, newline or backslash in a path as an octal escape
    (see proc(5)); the backslash last, so that an escaped backslash is not read again."""
    for escape, char in (('\\040', ' '), ('\\011', '\t'), ('\\012', '\n'), ('\\134', '\\')):
        field = field.replace(escape, char)
    return field


def migrate(conn):
    """Bring the schema to SCHEMA_VERSION, one migration at a time, in one transaction."""
    if conn.execute('PRAGMA user_version').fetchone()[0] == SCHEMA_VERSION:
        return
    with transaction(conn):
        # Read again under the write lock: another process may have migrated meanwhile.
        version = conn.execute('PRAGMA user_version').fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError('database schema %d is newer than this code (%d)'
                               % (version, SCHEMA_VERSION))
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute('PRAGMA user_version = %d' % SCHEMA_VERSION)


class Connections:
    """Hands out connections: a new one per use (a CGI process), or, with ``keep=True`` (a
    long-running server), the process's one kept connection, used by one thread at a time.

    Opening costs more than a push: in WAL mode the last connection to close also checkpoints
    and deletes the -wal file. The threads of a process take turns on a lock rather than in
    SQLite's busy handler, which sleeps 1, 2, 5, 10 ... 100 ms between tries however soon the
    database is free (sqliteDefaultBusyCallback in SQLite's main.c). A kept connection is
    never used in a forked child: the process id is part of its key, and a parent's
    connection is never closed in a child either (https://sqlite.org/howtocorrupt.html, 2.6).

    A kept connection is used again only while the files are as it left them (`FileState`):
    the same database file, of the same size and change time, and the same -wal file.
    Otherwise the use opens afresh, reading the file as a CGI push does: SQLite 3.7.17 does
    not notice a file written over under an open connection and would go on from its cache,
    and a connection whose -wal file was deleted commits into the deleted file.

    What becomes of the old connection is the trap: closing a connection makes SQLite
    checkpoint its -wal file and then delete the -wal and -shm files *by name* when it is the
    last one open on its database file. So it is closed only when that cannot hit another
    database's files: its file is still the one at the path and the -wal file at the path is
    its own or none (deleted: closing then saves what it held into the database). Otherwise
    (the database moved, deleted or replaced; a new -wal file made by another process) it is
    forsaken (`forsake`): left open, never closed, not even at exit. After a new -wal file
    appeared, this process would share SQLite's memory of the old one with any connection it
    opens, so it refuses the database until it is restarted. A use during which the files
    changed fails (StorageError): what it committed may not be in the database at the path,
    so the push is answered 1 and sent again.
    """

    def __init__(self):
        self.kept = {}  # (pid, path) -> (connection, journal, FileState at the end of its use)
        self.refused = set()  # paths whose -wal file was replaced under this process
        self.lock = self.lock_pid = None

    def use(self, path, journal=None, keep=False):
        """``with connections.use(path, journal, keep) as conn:``"""
        if not keep:
            return ConnectionUse(None, path, journal)
        if self.lock_pid != os.getpid():  # a forked child must not inherit a lock held
            import atexit
            import threading  # only here: CGI never pays for it
            self.lock, self.lock_pid = threading.Lock(), os.getpid()
            atexit.register(self.close)
        return ConnectionUse(self, path, journal)

    def close(self):
        """Close this process's kept connections where that is safe; forsake the others."""
        for key in [k for k in self.kept if k[0] == os.getpid()]:
            conn, journal, state = self.kept.pop(key)
            retire(conn, state, FileState(key[1]))


def retire(conn, state, now):
    """Close `conn`, last seen with its files in `state` and now finding them `now`, if that
    cannot delete another database's files (see Connections); else forsake it. Returns
    whether it was closed."""
    if now.same_file(state) and now.wal in (state.wal, None):
        conn.close()
        return True
    forsake(conn)
    return False


def forsake(conn):
    """Leave `conn` open for the life of the process: not closed, not even when the
    interpreter exits and frees what is left (one more reference that is never dropped)."""
    try:
        import ctypes
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
    except (ImportError, AttributeError):  # no ctypes: keep it in a list for the process
        forsake.kept = getattr(forsake, 'kept', []) + [conn]


class ConnectionUse:
    """One use of a connection: ``with`` gives it (opened, or the kept one) and, at the end,
    closes or keeps it; see Connections."""

    def __init__(self, connections, path, journal):
        self.connections, self.path, self.journal = connections, os.path.abspath(path), journal
        self.lock = None if connections is None else connections.lock
        self.key = (os.getpid(), self.path)
        self.conn = self.state = None

    def __enter__(self):
        if self.lock is not None and not self.lock.acquire(timeout=BUSY_TIMEOUT):
            raise StorageError('another thread kept the database for %g s' % BUSY_TIMEOUT)
        try:
            return self.open()
        except BaseException:
            self.release()
            raise

    def open(self):
        """The kept connection if the files are as it left them, else a new one."""
        conn = journal = state = None
        if self.connections is not None:
            if self.path in self.connections.refused:
                raise StorageError('the -wal file of %s was replaced under this process:'
                                   ' restart it' % self.path)
            conn, journal, state = self.connections.kept.pop(self.key, (None, None, None))
        if conn is not None:
            now = FileState(self.path, state)
            if journal != self.journal or now != state:
                if not retire(conn, state, now) and now.same_file(state):
                    self.connections.refused.add(self.path)
                    raise StorageError('the -wal file of %s was replaced under this process:'
                                       ' restart it' % self.path)
                conn = None
        if conn is None:
            conn, now = connect(self.path, self.journal), FileState(self.path)
        self.conn, self.state = conn, now
        return conn

    def __exit__(self, kind, value, tb):
        try:
            after = FileState(self.path, self.state)
            if kind is None and self.state.db is not None and (
                    not after.same_file(self.state)
                    or self.state.wal is not None and after.wal != self.state.wal):
                retire(self.conn, self.state, after)
                raise StorageError('the database file of %s or its -wal file was moved,'
                                   ' deleted or replaced during the transaction' % self.path)
            if kind is None and self.connections is not None:
                self.connections.kept[self.key] = (self.conn, self.journal, after)
            else:  # a CGI push's, or after an error: the next use opens afresh
                retire(self.conn, self.state, after)
        finally:
            self.release()
        return False

    def release(self):
        if self.lock is not None:
            self.lock.release()


class FileState:
    """What a kept connection must find unchanged: the database file's identity, size and
    change time, and the identity of its -wal file (None where a file is missing).

    Change times (ctime), not modification times: the kernel sets a file's ctime at every
    change, mtime and owner included, and no program can set it back, where `cp -p`,
    `rsync -a` and `tar x` put back an mtime they copied.

    The -wal file's identity is carried over from `before` (the state the connection last
    saw) while its folder's change time is as it was: no file in a folder is created,
    deleted or renamed without changing it. Only a folder that had settled (changed at
    least SETTLED seconds before `before` looked) is trusted so, as a change within the
    same clock tick as the one before it would leave the time as it was (ticks are 1 to
    10 ms; a few filesystems keep whole seconds, FAT two). Looking at the -wal file
    itself between two commits is not free: since Linux 6.13 it makes the next write give
    the file a fine-grained change time, one more journal write per push.
    """
    SETTLED = 3.0

    def __init__(self, path, before=None):
        self.db = self.wal = self.folder = None
        self.seen_at = time.time()
        try:
            st = os.stat(path)
            self.db = (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)
            st = os.stat(os.path.dirname(path))
            self.folder = (st.st_dev, st.st_ino, st.st_ctime_ns)
            if (before is not None and before.folder == self.folder
                    and st.st_ctime_ns < (before.seen_at - self.SETTLED) * 1e9):
                self.wal = before.wal
                return
            st = os.stat(path + '-wal')
            self.wal = (st.st_dev, st.st_ino)
        except OSError:
            pass

    def __eq__(self, other):
        return (self.db, self.wal) == (other.db, other.wal)

    def same_file(self, other):
        """Whether both saw the same database file (device and inode) at the path."""
        return None not in (self.db, other.db) and self.db[:2] == other.db[:2]


class transaction:
    """``with transaction(conn):`` runs the block in BEGIN IMMEDIATE ... COMMIT.

    IMMEDIATE takes the write lock at once, so a read-then-write block cannot be overtaken by
    another writer between the two; waiting for the lock is bounded by the busy timeout.
    """

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
        return False


# -- Deliveries and the processing hook -------------------------------------------------------

def utc_iso(t=None):
    """`t` (Unix time, default now) as UTC ISO 8601 with milliseconds: 2026-11-25T08:26:34.120Z"""
    t = time.time() if t is None else t
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t)) + '.%03dZ' % (t * 1000 % 1000)


def deliver(conn, push, claim_seconds=None):
    """Record one delivery of `push` (a dict of the columns); return ``(action, first)``.

    `first` is None for a new guid, else the row stored by the first delivery (a dict).
    Without a hook (`claim_seconds` None) the action is always 'done'. With one:
    'run'  -- this caller holds the claim and must now run the hook (see `process`);
    'done' -- the message was processed already;
    'busy' -- another caller's claim is live: the hook is running elsewhere right now.
    """
    now = time.time()
    stamp = utc_iso(now)
    hooked = claim_seconds is not None
    with transaction(conn):
        # Insert first and let the UNIQUE constraint decide: a first delivery, the common
        # case, is then one statement. A failed statement is undone on its own and the
        # transaction goes on (https://sqlite.org/lang_conflict.html, ABORT).
        try:
            conn.execute(INSERT_MESSAGE, (
                push['guid'], push['phone'], push.get('phone_normalised'), push['message'],
                push['charset'], push['raw_query'], push.get('extra', '{}'),
                push.get('remote_addr'), stamp, stamp,
                'processing' if hooked else 'processed',
                now + claim_seconds if hooked else None,
                None if hooked else stamp))
            return ('run' if hooked else 'done'), None
        except sqlite3.IntegrityError:
            # UNIQUE, or a NOT NULL or CHECK constraint? SQLite's wording differs between
            # versions (3.7.17: "column guid is not unique"), so ask the table instead: a row
            # with this guid means a retry; none means the push itself is bad.
            row = conn.execute(SELECT_MESSAGE, (push['guid'],)).fetchone()
            if row is None:
                raise
        conn.execute(COUNT_DELIVERY, (stamp, push['guid']))
        if claim_seconds is None or row['state'] == 'processed':
            return 'done', dict(row)
        return ('run' if try_claim(conn, row, now, claim_seconds) else 'busy'), dict(row)


def try_claim(conn, row, now, claim_seconds):
    """Claim `row` for a hook run unless a live claim holds it; call inside a transaction."""
    if row['state'] == 'processing' and (row['claimed_until'] or 0) > now:
        return False
    conn.execute(CLAIM, (now + claim_seconds, row['guid']))
    return True


def process(connect, guid, handler):
    """Run ``handler(message)`` for the claimed `guid` and record the outcome.

    `handler` is a callable or 'module:function'; `message` is the stored row as a dict, its
    ``extra`` parameters as a dict.
    `connect` opens a fresh connection (this may run in a thread of its own). Returns None
    when the hook returned, or a line for the log when it raised: the exception's class name,
    or its `summary` if it has one (forward.py's name the host and status, never the message);
    the traceback goes to the row's ``last_error`` for the operator.
    """
    import json
    conn = connect()
    try:
        message = dict(conn.execute(SELECT_MESSAGE, (guid,)).fetchone())
    finally:
        conn.close()
    message['extra'] = json.loads(message['extra'])
    try:
        if not callable(handler):
            # Loaded here, after the message is stored: a broken setting must not lose it.
            handler = load_handler(handler)
        handler(message)
    except (Exception, SystemExit) as exc:  # sys.exit() in a hook thread would end it unseen
        import traceback
        error, summary = traceback.format_exc(), getattr(exc, 'summary', type(exc).__name__)
    else:
        error = summary = None
    conn = connect()
    try:
        with transaction(conn):
            if error is None:
                conn.execute(MARK_PROCESSED, (utc_iso(), guid))
            else:
                conn.execute(MARK_FAILED, (error, guid))
    finally:
        conn.close()
    return summary


def choose_hook(handler, forward_url=None, forward_secret=None):
    """What processes a stored message: `handler` (a callable or 'module:function'), or with
    `forward_url` set, a POST to the business's application (forward.py, imported only then);
    None when storing is all."""
    if not forward_url:
        return handler
    import forward
    return forward.Forwarder(forward_url, forward_secret, handler)


def load_handler(spec):
    """Import a hook from 'package.module:function'."""
    import importlib
    module_name, sep, name = spec.partition(':')
    if not (module_name and sep and name):
        raise ValueError('%r is not module:function' % spec)
    handler = importlib.import_module(module_name)
    for part in name.split('.'):
        handler = getattr(handler, part)
    if not callable(handler):
        raise ValueError('%s is not callable' % spec)
    return handler


# -- The operator's command line --------------------------------------------------------------

LIST_COLUMNS = ('received_at', 'guid', 'phone', 'state', 'deliveries', 'message')
MIN_PURGE_DAYS = 7      # the gateway may still retry a recent guid; purged, it is stored anew
MAX_PURGE_DAYS = 36500  # a cutoff before the year 1000 would not sort as text: received_at
BATCH = 500             # rows a purge transaction deletes, an export read reads: a push waits less
# Shown escaped by list and show, as Python writes them (\x1b, \n, \u202e): the C0 and C1
# controls and DEL, which a terminal obeys (ESC [2J clears it, ESC ]0; retitles it), the line
# and paragraph separators, the bidirectional controls that reorder what is shown (CVE-2021-
# 42574), and the backslash itself, so that what is shown reads back one way only.
UNPRINTABLE = ('[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e'
               '\u2066-\u2069]')
# A CSV field that starts with one of these is a formula to a spreadsheet (CSV injection:
# https://owasp.org/www-community/attacks/CSV_Injection; ASVS 1.2.10 adds NUL). The export
# puts a ' in front; also before a field that starts with ' already, so that taking one
# leading ' away always gives the stored value back.
FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r', '\0', "'")
EXPORT_HELP = """Write the messages (all, or those received since TIMESTAMP) as CSV with a
header line, or as JSON Lines, to standard output in UTF-8. CSV is made safe to open in a
spreadsheet: a field that starts with = + - @ a tab, a carriage return, NUL or ' gets a ' in
front, so that it is shown as text, never run as a formula (CSV injection); remove one leading
' from such a field to get the stored value. JSON Lines holds every value exactly."""
SINCE_HELP = """ISO 8601, as received_at is written: 2026-11-25, 2026-11-25T08:26:34.120Z or
2026-11-25T15:26+07:00; UTC when no zone is given. Exports messages received at or after it.
A message is stamped a few seconds before it is committed: for incremental exports, start
each one a few minutes before the last one started and drop the guids you already have."""
MESSAGES_WAITING = """SELECT count(*), min(received_at) FROM messages
    WHERE state = 'failed' OR (state = 'processing' AND claimed_until < ?)"""
# Old enough and processed; with --include-failed (the second ?) every state but a live claim.
PURGEABLE = """received_at < ? AND (state = 'processed'
    OR (? AND NOT (state = 'processing' AND claimed_until >= ?)))"""


def printable(value):
    """`value` as text with its control characters (UNPRINTABLE) escaped: safe on a terminal."""
    import re
    return re.sub(UNPRINTABLE, lambda m: ascii(m.group())[1:-1], str(value))


def cmd_list(conn, args):
    """Print the newest messages, one a line, control characters escaped."""
    rows = conn.execute('SELECT * FROM messages ORDER BY id DESC LIMIT ?', (args.limit,))
    print('\t'.join(LIST_COLUMNS))
    for row in rows:
        text = row['message']
        fields = [printable(row[c]) for c in LIST_COLUMNS[:-1]]
        print('\t'.join(fields + [printable(text[:60]) + ('...' if len(text) > 60 else '')]))
    return 0


def cmd_show(conn, args):
    """Print every column of one message, control characters escaped."""
    row = conn.execute(SELECT_MESSAGE, (args.guid,)).fetchone()
    if row is None:
        print("no message with guid '%s'" % printable(args.guid), file=sys.stderr)
        return 1
    for key in row.keys():
        print('%-17s %s' % (key + ':', printable(row[key])))
    return 0


def cmd_export(conn, args):
    """Write the messages as CSV or JSON Lines (see EXPORT_HELP)."""
    if sys.stdout.isatty():  # the text as sent: a message's escape codes would reach the terminal
        print('storage.py export: writes messages as they are, escape codes included: send it'
              ' to a file or a pipe (or use list and show)', file=sys.stderr)
        return 2
    names = [d[0] for d in conn.execute('SELECT * FROM messages LIMIT 0').description]
    if args.format == 'csv':
        import csv
        writer = csv.writer(sys.stdout)
        writer.writerow(names)

        def write(row):
            writer.writerow([spreadsheet_safe(value) for value in row])
    else:
        import json

        def write(row):
            print(json.dumps(dict(zip(names, row)), ensure_ascii=False))
    # In batches, each its own short read: a rollback-journal database refuses writers while
    # it is read, and standard output may be a pipe to something slow.
    last_id = 0
    while True:
        batch = conn.execute('SELECT * FROM messages WHERE id > ? AND received_at >= ?'
                             ' ORDER BY id LIMIT ?', (last_id, args.since or '', BATCH))
        batch = batch.fetchall()
        if not batch:
            return 0
        for row in batch:
            write(row)
        last_id = batch[-1]['id']


def spreadsheet_safe(value):
    """A CSV field that no spreadsheet takes for a formula (see FORMULA_STARTS)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def cmd_stats(conn, args):
    """Print counts: messages, deliveries, duplicates, and messages by state."""
    total, deliveries, first, last = conn.execute(
        'SELECT count(*), coalesce(sum(deliveries), 0), min(received_at), max(received_at)'
        ' FROM messages').fetchone()
    print('messages:    %d' % total)
    print('deliveries:  %d' % deliveries)
    print('duplicates:  %d' % (deliveries - total))
    for state, count in conn.execute(
            'SELECT state, count(*) FROM messages GROUP BY state ORDER BY state'):
        print('%-12s %d' % (state + ':', count))
    print('first:       %s' % (first or '-'))
    print('last:        %s' % (last or '-'))
    return 0


def cmd_retry(conn, args):
    """Run the hook again over messages whose hook failed or whose claim expired (for cron)."""
    spec = choose_hook(args.handler or os.environ.get('FIBOSMS_HANDLER'),
                       os.environ.get('FIBOSMS_FORWARD_URL'),
                       os.environ.get('FIBOSMS_FORWARD_SECRET'))
    if not spec:
        print('no hook: give --handler module:function or set FIBOSMS_HANDLER'
              ' or FIBOSMS_FORWARD_URL', file=sys.stderr)
        return 2
    failures = 0
    for (guid,) in conn.execute(SELECT_RETRYABLE, (time.time(),)).fetchall():
        with transaction(conn):
            row = conn.execute(SELECT_MESSAGE, (guid,)).fetchone()
            claimed = row['state'] != 'processed' and try_claim(conn, row, time.time(),
                                                                 CLAIM_SECONDS)
        if not claimed:
            continue
        error = process(lambda: connect(args.db, args.journal, private=False), guid, spec)
        failures += error is not None
        print('%s %s' % (guid, 'failed: ' + error if error else 'processed'))
    return 1 if failures else 0


def cmd_check(conn, args):
    """Check integrity, journal mode, synchronous, permissions, SQLite version, filesystem,
    messages whose hook failed, and (--max-silence) when the last push came; exit 1 on a
    problem. Each problem is one line ending in '<-- PROBLEM'; --quiet prints only those."""
    problems = []

    def report(name, value, ok):
        if not (ok and args.quiet):
            print('%-14s %s%s' % (name + ':', value, '' if ok else '   <-- PROBLEM'))
        if not ok:
            problems.append(name)

    integrity = ', '.join(r[0] for r in conn.execute('PRAGMA integrity_check'))
    report('integrity', integrity, integrity == 'ok')
    mode = conn.execute('PRAGMA journal_mode').fetchone()[0]
    report('journal_mode', mode, mode == args.expected_journal)
    sync = conn.execute('PRAGMA synchronous').fetchone()[0]
    report('synchronous', {2: 'full'}.get(sync, sync), sync == 2)
    for name, path in (('file', args.db), ('directory', os.path.dirname(args.db))):
        mode_bits = os.stat(path).st_mode & 0o777
        report(name, '%s %o' % (path, mode_bits), not mode_bits & 0o077)
    real = os.path.join(os.path.realpath(os.path.dirname(args.db)), os.path.basename(args.db))
    place = folders_problem(os.path.dirname(real)) or place_problem(real, 'file')
    report('place', place or 'the running user\'s own, closed to others', place is None)
    fs = filesystem_type(args.db)
    volatile = fs in ('tmpfs', 'ramfs')
    report('filesystem', '%s%s' % (fs or 'unknown', ', emptied at every reboot' if volatile
                                   else ''), not volatile)
    version = sqlite3.sqlite_version
    report('sqlite', version, tuple(map(int, version.split('.'))) >= MIN_SQLITE)
    schema = conn.execute('PRAGMA user_version').fetchone()[0]
    report('schema', schema, schema == SCHEMA_VERSION)
    now = time.time()
    waiting, oldest = conn.execute(MESSAGES_WAITING, (now,)).fetchone()
    report('hook_failed', '%d messages waiting for retry%s'
           % (waiting, ', the oldest received %s' % oldest if waiting else ''), not waiting)
    last = conn.execute('SELECT max(last_delivery_at) FROM messages').fetchone()[0]
    hours = None if last is None else (now - parse_utc(last)) / 3600
    silent = args.max_silence is not None and (hours is None or hours > args.max_silence)
    report('last_push', 'none' if last is None else '%s, %.1f hours ago' % (last, hours),
           not silent)
    return 1 if problems else 0


def parse_utc(stamp):
    """Unix time of a stamp written by utc_iso: '2026-11-25T08:26:34.120Z'."""
    import calendar
    whole, _, fraction = stamp.rstrip('Z').partition('.')
    return calendar.timegm(time.strptime(whole, '%Y-%m-%dT%H:%M:%S')) + float('0.' + fraction)


def cmd_purge(conn, args):
    """Delete processed messages received more than DAYS days ago (at least 7); print how many.

    Deleted rows are overwritten with zeros (PRAGMA secure_delete), not only unlinked; a failed
    or unprocessed message is kept unless --include-failed. Backups keep their own copies.
    """
    now = time.time()
    cutoff = utc_iso(now - args.older_than * 86400)
    where = (cutoff, int(args.include_failed), now)
    if args.dry_run:
        doomed = conn.execute('SELECT received_at, guid, state FROM messages WHERE '
                              + PURGEABLE + ' ORDER BY id', where).fetchall()
        for row in doomed:
            print('\t'.join(printable(value) for value in row))
        deleted = len(doomed)
    else:
        if conn.execute('PRAGMA secure_delete = ON').fetchone()[0] != 1:
            raise StorageError('PRAGMA secure_delete = ON did not take')
        deleted = 0
        while True:  # in batches: a push waits for one batch, never for the whole purge
            with transaction(conn):
                done = conn.execute('DELETE FROM messages WHERE id IN (SELECT id FROM messages'
                                    ' WHERE ' + PURGEABLE + ' ORDER BY id LIMIT ?)',
                                    where + (BATCH,)).rowcount
            deleted += done
            if done < BATCH:
                break
        # The -wal file still holds the deleted text in the frames that stored it: empty it,
        # if no reader is in the way within 0.2 s (a push waits no longer). SQLite before
        # 3.8.8 knows no TRUNCATE and only checkpoints; the frames stay until overwritten.
        conn.execute('PRAGMA busy_timeout = 200')
        conn.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    old = conn.execute('SELECT count(*) FROM messages WHERE received_at < ?',
                       (cutoff,)).fetchone()[0]
    kept = old - deleted if args.dry_run else old
    print('%s %d messages received before %s; kept %d failed or unprocessed%s'
          % ('would delete' if args.dry_run else 'deleted', deleted, cutoff, kept,
             '' if args.include_failed or not kept else ' (--include-failed deletes them)'))
    return 0


def cmd_backup(conn, args):
    """Copy the database to DEST while pushes go on: one consistent snapshot, written to a
    temporary file in DEST's folder, checked (integrity_check, rows counted), fsynced and
    renamed to DEST, mode 0600. In WAL mode pushes are stored meanwhile as ever; with the
    rollback journal (network filesystems) they wait for the copy, within their 5 s busy
    timeout. Exit 1, with one line on standard error, when any step fails."""
    import tempfile
    source, dest = args.db, os.path.abspath(args.dest)
    folder = os.path.dirname(dest)
    if os.path.isdir(dest):
        return backup_failed(dest, 'is a directory; give the name of the file to write')
    if os.path.realpath(dest) in [os.path.realpath(source) + end
                                  for end in ('', '-wal', '-shm', '-journal')]:
        return backup_failed(dest, 'is the live database')
    try:
        fd, temp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(dest), suffix='.tmp',
                                    dir=folder)  # 0600, in DEST's folder: rename stays atomic
    except OSError as exc:
        return backup_failed(dest, exc)
    os.close(fd)
    try:
        counts = copy_database(source, temp)
        check_copy(temp, counts)
        fsync_path(temp)
        # A -wal or -journal left beside DEST belongs to the file it replaces (or was put
        # there by someone else): SQLite would play it into the copy. Removed first, and the
        # copy checked again where it now lies.
        for end in ('-wal', '-shm', '-journal'):
            if os.path.lexists(dest + end):
                os.remove(dest + end)
        os.rename(temp, dest)
        fsync_path(folder)  # the rename itself must survive a power cut
        check_copy(dest, counts)
    except (StorageError, sqlite3.Error, OSError) as exc:
        remove_database(temp)
        return backup_failed(dest, exc)
    except BaseException:  # Ctrl-C: no half copy of personal data left behind either
        remove_database(temp)
        raise
    print('backup: %d messages in %s, integrity ok' % (counts.get('messages', 0), dest))
    return 0


def backup_failed(dest, reason):
    print('storage.py backup: %s: %s; no backup made' % (dest, reason), file=sys.stderr)
    return 1


def remove_database(path):
    """Remove the database file at `path` and any -journal, -wal or -shm of it."""
    for name in (path, path + '-journal', path + '-wal', path + '-shm'):
        if os.path.exists(name):
            os.remove(name)


def copy_database(source, target):
    """Copy the database at `source` into the empty file `target`; return {table: rows}.

    One read transaction of `source`, attached to a connection on `target`, creates each
    table there, copies its rows with INSERT ... SELECT, then makes the indexes. It reads one
    snapshot (https://sqlite.org/isolation.html): in WAL mode pushes go on committing
    meanwhile; with the rollback journal they wait, within their busy timeout, for it to end.
    One way on every Python and SQLite we run on, rather than several: the online backup API
    is in Python only from 3.7 (Connection.backup), and copied in steps it starts again each
    time another process writes (https://sqlite.org/c3ref/backup_finish.html), so a steady
    stream of pushes could keep it from ending; VACUUM INTO needs SQLite 3.27; the file alone
    is not the database in WAL mode.
    """
    conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        conn.execute('PRAGMA synchronous = OFF')  # the caller fsyncs the finished file once
        conn.execute('ATTACH DATABASE ? AS live', (source,))
        page_size = conn.execute('PRAGMA live.page_size').fetchone()[0]
        conn.execute('PRAGMA main.page_size = %d' % page_size)
        conn.execute('BEGIN')
        # Tables first, with their rows; then indexes, triggers and views. SQLite makes its own
        # (sqlite_ names, and the automatic indexes of UNIQUE, whose sql is NULL).
        schema = conn.execute(
            "SELECT type, name, sql FROM live.sqlite_master WHERE sql IS NOT NULL"
            " AND substr(name, 1, 7) <> 'sqlite_' ORDER BY type <> 'table', rowid").fetchall()
        counts = {}
        for kind, name, sql in schema:
            conn.execute(sql)  # unqualified, so into main: the new file
            if kind == 'table':
                quoted = '"%s"' % name.replace('"', '""')
                conn.execute('INSERT INTO main.%s SELECT * FROM live.%s' % (quoted, quoted))
                counts[name] = conn.execute('SELECT count(*) FROM live.%s'
                                            % quoted).fetchone()[0]
        version = conn.execute('PRAGMA live.user_version').fetchone()[0]
        conn.execute('PRAGMA main.user_version = %d' % version)
        conn.execute('COMMIT')
        journal = conn.execute('PRAGMA live.journal_mode').fetchone()[0]
        conn.execute('DETACH DATABASE live')
        # In WAL mode like the source, so that a restored copy is as `check` expects it; not
        # where WAL cannot work, on a network filesystem (the receiver converts it when restored).
        if journal == 'wal' and choose_journal(target) == 'wal':
            conn.execute('PRAGMA main.journal_mode = wal')
    finally:
        conn.close()
    return counts


def check_copy(path, counts):
    """Raise StorageError unless the database at `path` passes integrity_check and holds
    `counts` rows ({table: rows})."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    try:
        integrity = ', '.join(r[0] for r in conn.execute('PRAGMA integrity_check'))
        if integrity != 'ok':
            raise StorageError('the copy fails integrity_check: %s' % integrity)
        for table, expected in sorted(counts.items()):
            got = conn.execute('SELECT count(*) FROM "%s"'
                               % table.replace('"', '""')).fetchone()[0]
            if got != expected:
                raise StorageError('the copy holds %d rows of %s, not %d'
                                   % (got, table, expected))
    finally:
        conn.close()


def fsync_path(path):
    """fsync(2) a file or a directory by its path (a directory: so that a new entry in it
    survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_journal(path):
    """The journal mode of the database at `path`, read without changing it."""
    if not os.path.exists(path):
        raise StorageError('no database at %s' % path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    try:
        return conn.execute('PRAGMA journal_mode').fetchone()[0]
    finally:
        conn.close()


def since_timestamp(text):
    """--since's value in the form received_at is written in (see SINCE_HELP)."""
    import argparse
    import datetime
    import re
    match = re.match(r'(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,3}))?)?)?'
                     r'(Z|[+-]\d\d:?\d\d)?$', text)
    try:
        if not match:
            raise ValueError('not of the form 2026-11-25T08:26:34.120Z')
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        t = datetime.datetime(int(year), int(month), int(day), int(hour or 0),
                              int(minute or 0), int(second or 0),
                              int((fraction or '0').ljust(3, '0')) * 1000)
        if zone and zone != 'Z':
            offset = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[-2:]))
            t = t - offset if zone[0] == '+' else t + offset
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError('%r: %s' % (text, exc))
    return '%04d-%02d-%02dT%02d:%02d:%02d.%03dZ' % (
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond // 1000)


def purge_days(text):
    """--older-than's value: whole days, MIN_PURGE_DAYS to MAX_PURGE_DAYS."""
    import argparse
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not a whole number of days' % text)
    if days < MIN_PURGE_DAYS:
        raise argparse.ArgumentTypeError(
            '%d is below %d: the gateway may still send a guid that recent again, and once'
            ' purged it would be stored as a new message' % (days, MIN_PURGE_DAYS))
    if days > MAX_PURGE_DAYS:
        raise argparse.ArgumentTypeError('%d is over %d days' % (days, MAX_PURGE_DAYS))
    return days


def positive_hours(text):
    """--max-silence's value: hours, more than 0."""
    import argparse
    try:
        hours = float(text)
    except ValueError:
        hours = 0.0
    if not hours > 0:  # also refuses nan
        raise argparse.ArgumentTypeError('%r is not a number of hours above 0' % text)
    return hours


def utf8_stdout():
    """Standard output in UTF-8 whatever the locale, written exactly (no newline translation).

    cron runs commands in the C locale, where Python 3.6 writes ASCII and would stop at the
    first Vietnamese letter (3.7 coerces that locale to UTF-8: PEP 538). Paths that are not
    UTF-8 go out as the bytes they were (surrogateescape).
    """
    import io
    sys.stdout.flush()
    return io.TextIOWrapper(sys.stdout.buffer, encoding='utf-8', errors='surrogateescape',
                            newline='', line_buffering=sys.stdout.line_buffering)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog='storage.py', description=__doc__.split('\n')[0])
    parser.add_argument('--db', default=os.environ.get('FIBOSMS_DB') or default_path(),
                        help='database file (default: $FIBOSMS_DB or %(default)s)')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    commands.required = True
    sub = commands.add_parser('list', help=cmd_list.__doc__)
    sub.add_argument('--limit', type=int, default=50)
    sub = commands.add_parser('show', help=cmd_show.__doc__)
    sub.add_argument('guid')
    sub = commands.add_parser('export', help='Write the messages as CSV or JSON Lines.',
                              description=EXPORT_HELP)
    sub.add_argument('--format', choices=('csv', 'jsonl'), default='csv')
    sub.add_argument('--since', type=since_timestamp, metavar='TIMESTAMP', help=SINCE_HELP)
    commands.add_parser('stats', help=cmd_stats.__doc__)
    sub = commands.add_parser('retry', help=cmd_retry.__doc__)
    sub.add_argument('--handler', help='module:function (default: $FIBOSMS_HANDLER)')
    sub = commands.add_parser('check', help='Check the database and the pushes; exit 1 on a'
                              ' problem.',
                              description=cmd_check.__doc__)
    sub.add_argument('--max-silence', type=positive_hours, metavar='HOURS',
                     help='a problem when no push came for longer than this')
    sub.add_argument('--quiet', action='store_true', help='print only the problems (for cron)')
    sub = commands.add_parser('purge', help='Delete processed messages older than DAYS days.',
                              description=cmd_purge.__doc__)
    sub.add_argument('--older-than', type=purge_days, required=True, metavar='DAYS',
                     help='at least %d' % MIN_PURGE_DAYS)
    sub.add_argument('--include-failed', action='store_true',
                     help='delete failed and unprocessed messages too')
    sub.add_argument('--dry-run', action='store_true',
                     help='print what would be deleted (received_at, guid, state); delete nothing')
    sub = commands.add_parser('backup', help='Copy the database, checked, to DEST.',
                              description=cmd_backup.__doc__)
    sub.add_argument('dest', metavar='DEST', help='the file to write (replaced if it exists)')
    args = parser.parse_args(argv)
    args.db = os.path.abspath(args.db)
    args.expected_journal = os.environ.get('FIBOSMS_JOURNAL') or choose_journal(args.db)
    try:
        # Keep the file in the journal mode it is in: the command line inspects, it does not
        # convert (and `check` could otherwise never see a database in the wrong mode).
        args.journal = current_journal(args.db)
        conn = connect(args.db, journal=args.journal, create=False, private=False)
    except (StorageError, sqlite3.Error, OSError) as exc:
        print('storage.py: %s: %s' % (args.db, exc), file=sys.stderr)
        return 1
    stdout, sys.stdout = sys.stdout, utf8_stdout()
    try:
        return globals()['cmd_' + args.command](conn, args)
    except (StorageError, sqlite3.Error, OSError) as exc:
        print('storage.py %s: %s: %s' % (args.command, args.db, exc), file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        sys.stdout.detach()  # leaves the real standard output open
        sys.stdout = stdout
        conn.close()


if __name__ == '__main__':
    sys.exit(main())
