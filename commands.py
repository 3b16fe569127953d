"""The operator's commands: ``python3 storage.py COMMAND`` (storage.py hands its command line
here; no push ever loads this file).

    list [--limit N]                the newest messages, one a line
    show GUID                       one message, every column
    export [--format csv|jsonl] [--since TIMESTAMP] > FILE
    stats                           messages, deliveries, duplicates, states
    retry                           run the hook over failed messages (for cron)
    catchup [--minutes N]           store the SMS the push lost, from FiboSMS's API (for cron)
    check [--max-silence HOURS] [--quiet]   the settings, the database, the pushes (for cron)
    log [--lines N]                 the receiver's own log: why pushes were answered 1
    backup DEST                     a checked copy, taken while pushes go on
    purge --older-than DAYS [--include-failed] [--dry-run]

Each finds the settings file, the database and the log as the receiver does
(receiver.read_settings): FIBOSMS_CONFIG, else ~/fibosms-data/settings.env, of the user who
runs it; ``--db PATH`` names another database. Run them as the user the receiver runs as
(``sudo -u fibosms ...`` on a server of your own): the data is that user's and no one else's.
Output is UTF-8 whatever the locale, and list, show, log and retry escape control characters.
"""
import argparse
import calendar
import contextlib
import csv
import datetime
import io
import json
import os
import re
import sqlite3
import sys
import tempfile
import time

import ownerlog
import receiver
import storage

LIST_COLUMNS = ('received_at', 'guid', 'phone', 'state', 'deliveries', 'message')
NO_DATABASE = ('log', 'inbox', 'inbox-password', 'catchup')  # main opens none for them
MIN_PURGE_DAYS = 7      # the gateway may still retry a recent guid; purged, it is stored anew
MAX_PURGE_DAYS = 36500  # a cutoff before the year 1000 would not sort as text: received_at
BATCH = 500             # rows a purge transaction deletes, an export read reads: a push waits less
# Every setting there is, with what it does: check names any other as a mistake (README's
# settings table holds the same names: tests/test_readme.py).
SETTINGS = {
    'FIBOSMS_TOKEN': 'the secret: the last part of the page URL (at least 12 characters)',
    'FIBOSMS_ALLOW': 'addresses and networks that may call, comma-separated',
    'FIBOSMS_TRUSTED_PROXIES': 'proxies whose X-Forwarded-For is believed',
    'FIBOSMS_DB': 'the database file (default: messages.sqlite3 beside the settings file)',
    'FIBOSMS_JOURNAL': 'wal or delete (default: wal; delete on a network filesystem)',
    'FIBOSMS_HANDLER': 'module:function called with each stored message',
    'FIBOSMS_FORWARD_URL': "POST each stored message to this URL (forward.py)",
    'FIBOSMS_FORWARD_SECRET': 'its Standard Webhooks signing secret, whsec_...',
    'FIBOSMS_CONFIG': 'the settings file (only from SetEnv or the environment)',
    'FIBOSMS_API_URL': "FiboSMS's API (default http://center.fibosms.com/Service.asmx)",
    'FIBOSMS_API_CLIENT_NO': "the account's clientNo at FiboSMS's API (CL1234)",
    'FIBOSMS_API_CLIENT_PASS': "the account's clientPass (in the query string of each call)",
    'FIBOSMS_API_SERVICE_TYPE': "the account's serviceType that replies are sent with",
    'FIBOSMS_REPLY': 'replies to the customer by keyword, JSON: {"*": "...", "DK": "..."}',
    'FIBOSMS_REPLY_BRAND': 'send replies under this registered brand name (SendMaskedSMS)',
    'FIBOSMS_REPLY_PER_DAY': 'replies to one phone in any 24 hours, at most (default 3)',
    'FIBOSMS_REPLY_A_DAY': 'replies to all phones in any 24 hours at most (default 500)',
    'FIBOSMS_REPLY_ASCII': 'yes: send replies without diacritics (default no)',
    'FIBOSMS_INBOX_PASSWORD': "the inbox's password, hashed (storage.py inbox-password)",
    'FIBOSMS_INBOX_TIMEZONE': "the inbox's time zone, +07:00 (Vietnam) by default",
}
# Shown escaped, as Python writes them (\x1b, \n, \u202e): the C0 and C1 controls and DEL,
# which a terminal obeys (ESC [2J clears it, ESC ]0; retitles it), the line and paragraph
# separators, the bidirectional controls that reorder what is shown (CVE-2021-42574), the
# invisible format characters that make two phones look alike (a zero-width space, a BOM,
# the tag characters), and the backslash itself, so that what is shown reads back one way.
UNPRINTABLE = re.compile('[\\\\\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e'
                         '\u2060-\u2069\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]')
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
    return UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], str(value))


# -- Reading ----------------------------------------------------------------------------------

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
    row = conn.execute(storage.SELECT_MESSAGE, (args.guid,)).fetchone()
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
        writer = csv.writer(sys.stdout)
        writer.writerow(names)

        def write(row):
            writer.writerow([spreadsheet_safe(value) for value in row])
    else:
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


def cmd_log(conn, args):
    """Print the receiver's log, the newest lines last: why pushes were answered 1."""
    for line in ownerlog.lines(args.settings['FIBOSMS_CONFIG'], args.lines):
        print(printable(line))
    return 0


# -- The hook ---------------------------------------------------------------------------------

def cmd_retry(conn, args):
    """Run the hook again over messages whose hook failed or whose claim ended (for cron)."""
    settings = dict(args.settings)
    if args.handler:
        settings['FIBOSMS_HANDLER'] = args.handler
    import hooks
    if not hooks.configured(settings):
        print('no hook: set FIBOSMS_HANDLER or FIBOSMS_FORWARD_URL in %s, or give --handler'
              ' module:function' % settings['FIBOSMS_CONFIG'], file=sys.stderr)
        return 2

    def use():
        return contextlib.closing(storage.connect(args.db, args.journal, check=False))

    def report(guid, error):
        print('%s %s' % (printable(guid), 'failed: ' + printable(error) if error
                         else 'processed'))

    failures = hooks.retry(use, settings, report)
    if settings.get('FIBOSMS_REPLY'):   # the replies whose request never left (fiboreply.py)
        import fiboreply
        failures += fiboreply.resend(dict(settings, FIBOSMS_DB=args.db), print)
    return 1 if failures else 0


def cmd_catchup(conn, args):
    """Store the SMS whose push the gateway gave up on, from FiboSMS's API, each once; run
    its hook (for cron; fiboapi.py)."""
    import fiboapi
    return fiboapi.command(args)


# -- The inbox (inbox.py) ---------------------------------------------------------------------

def cmd_inbox_password(conn, args):
    """Set the inbox's password (asked twice, not echoed), kept hashed in the settings file."""
    import getpass
    import inbox
    password = getpass.getpass('New inbox password: ')
    if len(password) < inbox.MIN_PASSWORD:
        print('storage.py: at least %d characters' % inbox.MIN_PASSWORD, file=sys.stderr)
        return 2
    if getpass.getpass('Again: ') != password:
        print('storage.py: the two differ; nothing changed', file=sys.stderr)
        return 2
    path = inbox.set_password(args.settings['FIBOSMS_CONFIG'], password)
    print('The inbox password is set in %s; sessions already open stay open until they end.'
          % path)
    return 0


def cmd_inbox(conn, args):
    """Serve the inbox on http://127.0.0.1:PORT/ for this machine alone (reach it from yours
    with ssh -L PORT:127.0.0.1:PORT); stop it with Ctrl-C."""
    import inbox
    import smallserver
    server = smallserver.make_server('127.0.0.1', args.port, inbox.make_inbox())
    print('Inbox on http://127.0.0.1:%d/ (this machine only)' % server.server_address[1])
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# -- Checking ---------------------------------------------------------------------------------

def cmd_check(conn, args):
    """Check the settings (the file's place and lines, the secret, the hook's settings),
    the database (integrity, journal mode, synchronous, permissions, SQLite version,
    filesystem), an older ~/.fibosms database left behind, messages whose hook failed, and,
    with --max-silence, when the last push came. One line per item; each problem ends in
    '<-- PROBLEM' (--quiet prints only those); exit 1 on a problem."""
    problems = []

    def report(name, value, ok):
        if not (ok and args.quiet):
            print('%-14s %s%s' % (name + ':', printable(value), '' if ok else '   <-- PROBLEM'))
        if not ok:
            problems.append(name)

    for name, value, ok in settings_findings(args.settings):
        report(name, value, ok)
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
    place = (storage.folders_problem(os.path.dirname(args.db))
             or storage.place_problem(real, 'file'))
    report('place', place or "the running user's own, closed to others", place is None)
    older = os.path.join(os.path.expanduser('~'), receiver.OLD_FOLDER,
                         receiver.DATABASE_FILE)
    in_use = args.settings['FIBOSMS_DB']    # the receiver's, whatever --db names
    try:
        split = os.path.isfile(older) and not (os.path.exists(in_use) and
                                               os.path.samefile(older, in_use))
    except OSError:
        split = False
    if split:   # receiver.config_path: once ~/fibosms-data exists, the pushes go there
        report('older_db', '%s, from before the settings file, is not the database the'
               ' receiver uses: read it with --db, then rename it' % older, False)
    fs = storage.filesystem_type(args.db)
    volatile = fs in ('tmpfs', 'ramfs')
    report('filesystem', '%s%s' % (fs or 'unknown', ', emptied at every reboot' if volatile
                                   else ''), not volatile)
    version = sqlite3.sqlite_version
    report('sqlite', version, tuple(map(int, version.split('.'))) >= (3, 7, 17))
    schema = conn.execute('PRAGMA user_version').fetchone()[0]
    report('schema', schema, schema == storage.SCHEMA_VERSION)
    now = time.time()
    waiting, oldest = conn.execute(MESSAGES_WAITING, (now,)).fetchone()
    report('hook_failed', '%d messages waiting for retry%s'
           % (waiting, ', the oldest received %s' % oldest if waiting else ''), not waiting)
    last = conn.execute('SELECT max(last_delivery_at) FROM messages').fetchone()[0]
    hours = None if last is None else (now - parse_utc(last)) / 3600
    silent = args.max_silence is not None and (hours is None or hours > args.max_silence)
    report('last_push', 'none' if last is None else '%s, %.1f hours ago' % (last, hours),
           not silent)
    if any(args.settings.get(name) for name in ('FIBOSMS_API_CLIENT_NO', 'FIBOSMS_REPLY')):
        import fiboapi      # catch-up and the replies
        for name, value, ok in fiboapi.findings(conn, args.settings):
            report(name, value, ok)
    return 1 if problems else 0


def settings_findings(settings):
    """(name, what was found, whether it is fine) for the settings file and each setting a
    push or a hook would find unusable: so that check names a mistake before a push meets it."""
    path = settings['FIBOSMS_CONFIG']
    found = []
    if os.path.lexists(path):
        problem = (storage.folders_problem(os.path.dirname(path))
                   or storage.place_problem(path, 'settings file'))
        found.append(('settings', problem or path, problem is None))
        for number, text in settings_file_problems(path):
            found.append(('settings', '%s line %d: %s' % (path, number, text), False))
    else:
        found.append(('settings', 'no settings file at %s: only the environment' % path, True))
    for name in sorted(settings):
        if name not in SETTINGS:
            found.append(('settings', '%s is no setting: a typing mistake?' % name, False))
    try:
        token = receiver.check_settings(settings)
        found.append(('token', 'set' if token else 'not set: only %s may call' % (
            'FIBOSMS_ALLOW' if settings.get('FIBOSMS_ALLOW') else 'this machine'), True))
        import addresses
        for name in ('FIBOSMS_ALLOW', 'FIBOSMS_TRUSTED_PROXIES'):
            addresses.networks(settings, name)
        journal = settings.get('FIBOSMS_JOURNAL')
        if journal is not None and journal not in storage.JOURNAL_MODES:
            raise receiver.SettingError('FIBOSMS_JOURNAL %r is not one of %s'
                                        % (journal, ', '.join(storage.JOURNAL_MODES)))
        import hooks
        if hooks.configured(settings):
            hook = hooks.load(settings)
            if getattr(hook, 'check', None):
                hook.check()
            found.append(('hook', ', then '.join(name for name in (
                'FIBOSMS_REPLY' if settings.get('FIBOSMS_REPLY') else None,
                'FIBOSMS_FORWARD_URL' if settings.get('FIBOSMS_FORWARD_URL')
                else settings.get('FIBOSMS_HANDLER')) if name), True))
    except Exception as exc:
        found.append(('settings', getattr(exc, 'summary', None) or '%s: %s' % (
            type(exc).__name__, exc), False))
    return found


def settings_file_problems(path):
    """[(line number, problem)] of the settings file at `path`; [] if it cannot be read."""
    try:
        return receiver.read_settings_file(path, True)[1]
    except receiver.Reject:
        return []


def parse_utc(stamp):
    """Unix time of a stamp written by storage.utc_iso: '2026-11-25T08:26:34.120Z'."""
    whole, _, fraction = stamp.rstrip('Z').partition('.')
    return calendar.timegm(time.strptime(whole, '%Y-%m-%dT%H:%M:%S')) + float('0.' + fraction)


# -- Writing ----------------------------------------------------------------------------------

def cmd_purge(conn, args):
    """Delete processed messages received more than DAYS days ago (at least 7); print how many.

    Deleted rows are overwritten with zeros (PRAGMA secure_delete), not only unlinked; a failed
    or unprocessed message is kept unless --include-failed. Backups keep their own copies.
    """
    now = time.time()
    cutoff = storage.utc_iso(now - args.older_than * 86400)
    where = (cutoff, int(args.include_failed), now)
    if args.dry_run:
        doomed = conn.execute('SELECT received_at, guid, state FROM messages WHERE '
                              + PURGEABLE + ' ORDER BY id', where).fetchall()
        for row in doomed:
            print('\t'.join(printable(value) for value in row))
        deleted = len(doomed)
    else:
        if conn.execute('PRAGMA secure_delete = ON').fetchone()[0] != 1:
            raise storage.StorageError('PRAGMA secure_delete = ON did not take')
        deleted = 0
        while True:  # in batches: a push waits for one batch, never for the whole purge
            with storage.Transaction(conn):
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
        storage.fsync_path(temp)
        # A -wal or -journal left beside DEST belongs to the file it replaces (or was put
        # there by someone else): SQLite would play it into the copy. Removed first, and the
        # copy checked again where it now lies.
        for end in ('-wal', '-shm', '-journal'):
            if os.path.lexists(dest + end):
                os.remove(dest + end)
        os.rename(temp, dest)
        storage.fsync_path(folder)  # the rename itself must survive a power cut
        check_copy(dest, counts)
    except (storage.StorageError, sqlite3.Error, OSError) as exc:
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
    conn = sqlite3.connect(target, timeout=storage.BUSY_TIMEOUT, isolation_level=None)
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
        if journal == 'wal' and storage.choose_journal(target) == 'wal':
            conn.execute('PRAGMA main.journal_mode = wal')
    finally:
        conn.close()
    return counts


def check_copy(path, counts):
    """Raise StorageError unless the database at `path` passes integrity_check and holds
    `counts` rows ({table: rows})."""
    conn = sqlite3.connect(path, timeout=storage.BUSY_TIMEOUT)
    try:
        integrity = ', '.join(r[0] for r in conn.execute('PRAGMA integrity_check'))
        if integrity != 'ok':
            raise storage.StorageError('the copy fails integrity_check: %s' % integrity)
        for table, expected in sorted(counts.items()):
            got = conn.execute('SELECT count(*) FROM "%s"'
                               % table.replace('"', '""')).fetchone()[0]
            if got != expected:
                raise storage.StorageError('the copy holds %d rows of %s, not %d'
                                           % (got, table, expected))
    finally:
        conn.close()


# -- The command line -------------------------------------------------------------------------

def since_timestamp(text):
    """--since's value in the form received_at is written in (see SINCE_HELP)."""
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
    sys.stdout.flush()
    return io.TextIOWrapper(sys.stdout.buffer, encoding='utf-8', errors='surrogateescape',
                            newline='', line_buffering=sys.stdout.line_buffering)


def parser():
    top = argparse.ArgumentParser(prog='storage.py', description=__doc__.split('\n')[0])
    top.add_argument('--db', help='the database file (default: FIBOSMS_DB of the settings,'
                                  ' else messages.sqlite3 beside the settings file)')
    commands = top.add_subparsers(dest='command', metavar='COMMAND')
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
    sub = commands.add_parser('log', help=cmd_log.__doc__)
    sub.add_argument('--lines', type=int, default=50)
    sub = commands.add_parser('retry', help=cmd_retry.__doc__)
    sub.add_argument('--handler', help='module:function (default: FIBOSMS_HANDLER)')
    sub = commands.add_parser('catchup', help=cmd_catchup.__doc__)
    sub.add_argument('--minutes', type=int, metavar='N',
                     help='the SMS of the last N minutes (default: a day)')
    sub.add_argument('--store', metavar='ID', help='store the undecided SMS ID: it is new')
    sub.add_argument('--ignore', metavar='ID', help='drop the undecided SMS ID: it is stored')
    sub = commands.add_parser('check', help='Check the settings, the database and the pushes;'
                              ' exit 1 on a problem.', description=cmd_check.__doc__)
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
    commands.add_parser('inbox-password', help=cmd_inbox_password.__doc__)
    sub = commands.add_parser('inbox', help=cmd_inbox.__doc__)
    sub.add_argument('--port', type=int, default=8001, help='port on 127.0.0.1 (%(default)s)')
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.settings = receiver.read_settings()
    except receiver.Reject as exc:
        # The settings file cannot be used: say why, and go on with the environment alone,
        # so that the messages can still be read, and check can name the mistake.
        print('storage.py: %s' % exc.reason, file=sys.stderr)
        path = receiver.config_path()[0]
        args.settings = dict((k, v) for k, v in os.environ.items() if k.startswith('FIBOSMS_'))
        args.settings.setdefault('FIBOSMS_DB', os.path.join(os.path.dirname(path),
                                                            receiver.DATABASE_FILE))
        args.settings['FIBOSMS_CONFIG'] = path
    named, args.db = args.db, os.path.abspath(args.db or args.settings['FIBOSMS_DB'])
    args.expected_journal = (args.settings.get('FIBOSMS_JOURNAL')
                             or storage.choose_journal(args.db))
    try:    # these need no database (the log may tell why there is none)
        conn = None if args.command in NO_DATABASE else open_database(args, named)
    except (storage.StorageError, sqlite3.Error, OSError) as exc:
        print('storage.py: %s: %s' % (args.db, exc), file=sys.stderr)
        return 1
    stdout, sys.stdout = sys.stdout, utf8_stdout()
    try:
        return globals()['cmd_' + args.command.replace('-', '_')](conn, args)
    except (storage.StorageError, sqlite3.Error, OSError) as exc:
        print('storage.py %s: %s: %s' % (args.command, args.db, exc), file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        sys.stdout.detach()  # leaves the real standard output open
        sys.stdout = stdout
        if conn is not None:
            conn.close()


def open_database(args, named):
    """A connection to the database the commands work on, refused where it is not there or
    not this user's (root, say: a file it made there would lock the receiver out)."""
    if not os.path.exists(args.db):
        raise storage.StorageError('no database at %s%s' % (args.db, '' if named or os.geteuid()
                                   else ' (as root: run this as the user the receiver runs as,'
                                   ' e.g. sudo -u fibosms python3 %s ...)' % sys.argv[0]))
    owner = os.stat(os.path.dirname(args.db)).st_uid
    if owner != os.geteuid():
        raise storage.StorageError('the data belongs to uid %d (%s): run this as that user,'
                                   ' e.g. sudo -u %s python3 %s ...' % (
                                       owner, user_name(owner), user_name(owner), sys.argv[0]))
    # Keep the file in the journal mode it is in: the commands inspect, they do not convert
    # (and check could otherwise never see a database in the wrong mode).
    conn = sqlite3.connect(args.db, timeout=storage.BUSY_TIMEOUT)
    try:
        args.journal = conn.execute('PRAGMA journal_mode').fetchone()[0]
    finally:
        conn.close()
    return storage.connect(args.db, journal=args.journal, create=False, check=False)


def user_name(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
