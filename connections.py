"""The kept connection of a long-running server (mod_wsgi, Passenger, the small server).

Loaded only by those: a CGI process uses storage.Once. The policy, all of it here:

- One connection per process, its threads taking turns on a lock: a first delivery then
  costs one fsync, of the -wal file, not an open, and the checkpoint and deletion of files
  that closing the last connection costs.
- It is used only while the files at the path are those it opened (storage.files), looked
  at before each use: changed, the use opens afresh (SQLite 3.7.17 would go on from a
  stale cache; a deleted -wal takes commits that no one else sees). And after each use, as
  for CGI: changed during it, the push fails (answered 1, sent again).
- The trap: closing the last connection to a database makes SQLite delete its -wal and -shm
  files *by name*, and those names may now be another database's. So an old connection is
  closed only while they are its own files, or nobody's; else it is abandoned: never closed,
  not even at exit. And where another process made a new -wal beside the same database
  file, this process refuses the database until it is restarted: a connection it opened
  would share SQLite's memory of the old -shm.
- A forked child never uses, nor closes, its parent's connection
  (https://sqlite.org/howtocorrupt.html, 2.6).

tests/test_connections.py holds each case: files moved, deleted, replaced, written over in
place, under one process and two.
"""
import os
import threading

import storage


class Kept:
    """``with kept.use(path, journal) as conn:`` this process's kept connection."""

    def __init__(self):
        self.lock = self.pid = self.kept = None     # kept: (path, journal, connection, files)
        self.refused = set()                        # paths refused until a restart

    def use(self, path, journal=None):
        return Use(self, os.path.abspath(path), journal)


class Use:
    """One use of the kept connection, or of a new one if the files changed."""

    def __init__(self, kept, path, journal):
        self.kept, self.path, self.journal = kept, path, journal
        self.conn = self.seen = None

    def __enter__(self):
        kept = self.kept
        if kept.pid != os.getpid():     # the first use, or a forked child's copy of the parent
            if kept.kept:               # the parent's connection: never used, never closed
                abandon(kept.kept[2])
            kept.lock, kept.pid, kept.kept = threading.Lock(), os.getpid(), None
        if not kept.lock.acquire(timeout=storage.BUSY_TIMEOUT):
            raise storage.StorageError('another thread held the database for %g s'
                                       % storage.BUSY_TIMEOUT)
        try:
            last, kept.kept, self.seen = kept.kept, None, storage.files(self.path)
            if last and last[:2] == (self.path, self.journal) and last[3] == self.seen:
                self.conn = last[2]
                return self.conn
            if last:
                retire(kept, last[0], last[2], last[3], storage.files(last[0]))
            if self.path in kept.refused:
                raise storage.StorageError('another process made a new -wal file for %s under'
                                           ' this one: restart this one' % self.path)
            self.conn = storage.connect(self.path, self.journal)
            self.seen = storage.files(self.path)
            return self.conn
        except BaseException:
            kept.lock.release()
            raise

    def __exit__(self, kind, value, tb):
        try:
            after = storage.files(self.path)
            if kind is None and not storage.moved(self.seen, after):
                self.kept.kept = (self.path, self.journal, self.conn, after)
                return
            retire(self.kept, self.path, self.conn, self.seen, after)
            if kind is None:
                raise storage.StorageError(storage.MOVED % self.path)
        finally:
            self.kept.lock.release()


def retire(kept, path, conn, seen, now):
    """Close `conn`, opened on the files `seen` at `path`, which are `now` there, unless that
    could delete another database's -wal or -shm file; else abandon it."""
    same_file = now[0] is not None and now[0][:2] == seen[0][:2]
    if same_file and now[1] in (None, seen[1]) and now[2] in (None, seen[2]):
        conn.close()
        return
    abandon(conn)
    if same_file:
        kept.refused.add(path)


def abandon(conn):
    """Never close `conn`, not even at exit: a daemon thread holds it while it waits forever,
    and Python frees nothing a daemon thread holds when it exits (tests/test_connections.py
    shows it on every Python we run on)."""
    threading.Thread(target=lambda held: threading.Event().wait(), args=(conn,),
                     name='fibosms-abandoned-connection', daemon=True).start()
