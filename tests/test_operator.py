"""The operator's care of the data: `storage.py backup`, `purge`, `export --since`, the CSV
export's defence against formulas, `check`'s findings, and control characters kept off the
terminal. Each command runs as a real process on a real file; the backup runs while the small
server, a process of its own, stores pushes over a real socket."""
import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import commands
import storage
import support
from conftest import DONE, ROOT, rows, write_settings

DAY = 86400.0
MARKER = 'Số nhà 12 Nguyễn Huệ, private'


def clean_env(**extra):
    """Our environment without FIBOSMS_ settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
    env.update(extra)
    return env


def cli(db, *args, **kwargs):
    """`python3 storage.py --db DB ARGS...`: (exit code, stdout bytes, stderr text)."""
    env = kwargs.pop('env', None) or clean_env()
    done = subprocess.Popen([sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db]
                            + list(args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = done.communicate(timeout=60)
    return done.returncode, out, err.decode('utf-8', 'replace')


def store(db, guid, message='hello', phone='0912345678', age=0.0, state='processed',
          claimed_until=None):
    """Store one message as the receiver would, then date it `age` seconds back and put it
    in `state`; returns its received_at."""
    conn = storage.connect(db)
    try:
        storage.deliver(conn, {'guid': guid, 'phone': phone, 'message': message,
                               'charset': 'utf-8', 'raw_query': 'guid=' + guid})
        stamp = storage.utc_iso(time.time() - age)
        with storage.Transaction(conn):
            conn.execute('UPDATE messages SET received_at = ?, last_delivery_at = ?,'
                         ' state = ?, claimed_until = ? WHERE guid = ?',
                         (stamp, stamp, state, claimed_until, guid))
    finally:
        conn.close()
    return stamp


def guids(db):
    return [r['guid'] for r in rows(db)]


# -- backup, under load, and a restore --------------------------------------------------------

class Server:
    """`python3 receiver.py --port 0 --db DB` as a process; fails the test if it cannot start."""

    def __init__(self, db, journal=None):
        env = clean_env(**({'FIBOSMS_JOURNAL': journal} if journal else {}))
        env.pop('PYTHONUNBUFFERED', None)
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'receiver.py'), '--port', '0', '--db', db],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.process.stdout.readline().decode()
        assert line.startswith('Listening on http://'), 'the server did not start: %r' % line
        self.url = line.split()[-1].rstrip('/')

    def push(self, guid):
        """(HTTP status, body) of one push; (the error's name, b'') when there was no answer."""
        query = urllib.parse.urlencode({'guid': guid, 'phone': '0912345678',
                                        'message': 'push ' + guid})
        try:
            with urllib.request.urlopen('%s/?%s' % (self.url, query), timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:  # refused, reset, timed out: recorded, and fails the test
            return type(exc).__name__, b''

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


class Pusher(threading.Thread):
    """Pushes new guids one after another until stopped (at most `limit` of them, for at
    most 60 s); records (guid, HTTP status, body, when the answer came) for each."""

    def __init__(self, server, limit=20000):
        threading.Thread.__init__(self, daemon=True)
        self.server, self.limit = server, limit
        self.answers = []
        self.halt = threading.Event()

    def run(self):
        end = time.monotonic() + 60
        for n in range(self.limit):
            if self.halt.is_set() or time.monotonic() > end:
                return
            guid = 'live-%d' % n
            status, body = self.server.push(guid)
            self.answers.append((guid, status, body, time.monotonic()))

    def wait_for(self, count):
        end = time.monotonic() + 30
        while len(self.answers) < count and time.monotonic() < end and self.is_alive():
            time.sleep(0.01)
        assert len(self.answers) >= count, 'the pushes did not get going'

    def stop(self):
        self.halt.set()
        self.join(60)


def prefill(db, count):
    """`count` old processed messages of 500 characters, so that a copy takes a while."""
    conn = storage.connect(db)
    stamp = storage.utc_iso(time.time() - 30 * DAY)
    try:
        with storage.Transaction(conn):
            conn.executemany(storage.INSERT_MESSAGE, (
                ('old-%d' % n, '0912345678', '84912345678', 'x' * 500, 'utf-8', '', '{}',
                 '127.0.0.1', stamp, stamp, 'processed', None, None, stamp)
                for n in range(count)))
    finally:
        conn.close()


def backup_under_load(db, dest, journal=None, old=80000):
    """Run `backup DEST` of `old` messages and more while a server stores a steady stream of
    pushes.

    Returns the backup's (code, out, err), the pushes' answers, the time the backup started
    and ended, and the still running server.
    """
    prefill(db, old)
    server = Server(db, journal)
    pusher = Pusher(server)
    pusher.start()
    try:
        pusher.wait_for(20)
        began = time.monotonic()
        result = cli(db, 'backup', dest)
        ended = time.monotonic()
        time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    finally:
        pusher.stop()
    return result, pusher.answers, began, ended, server


@pytest.fixture
def backed_up(db, tmp_path):
    """A backup of `db` taken under load, and the server, stopped at the end."""
    dest = str(tmp_path / 'backups' / 'messages-backup.sqlite3')
    os.makedirs(os.path.dirname(dest), mode=0o700)
    result, answers, began, ended, server = backup_under_load(db, dest)
    yield dest, result, answers, began, server
    server.stop()


# With the rollback journal, pushes wait for the whole copy (up to their 5 s busy timeout):
# a smaller database keeps that wait well inside it on a slow machine.
@pytest.mark.parametrize('journal, old', [('wal', 80000), ('delete', 20000)])
def test_backup_under_load_is_complete_and_refuses_no_push(db, tmp_path, journal, old):
    """A backup taken while pushes keep coming is whole, holds every push answered 2 before
    it began, is 0600, leaves no temporary file; and every push got 2 meanwhile."""
    dest = str(tmp_path / 'backups' / 'messages-backup.sqlite3')
    os.makedirs(os.path.dirname(dest))
    (code, out, err), answers, began, ended, server = backup_under_load(db, dest, journal, old)
    server.stop()
    assert code == 0, err
    assert out.decode().startswith('backup: ') and out.decode().endswith(
        ' messages in %s, integrity ok\n' % dest)
    assert [a for a in answers if a[1:3] != (200, DONE)] == []
    copy = sqlite3.connect(dest)
    try:
        assert copy.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
        assert copy.execute('PRAGMA journal_mode').fetchone()[0] == journal
        copied = {g for (g,) in copy.execute('SELECT guid FROM messages')}
    finally:
        copy.close()
    before = {guid for guid, _, _, when in answers if when < began}
    assert len(before) >= 20 and before <= copied
    assert sum(1 for g in copied if g.startswith('old-')) == old
    assert os.stat(dest).st_mode & 0o777 == 0o600
    assert os.listdir(os.path.dirname(dest)) == [os.path.basename(dest)]
    if journal == 'wal':  # readers do not hold writers back: pushes were stored meanwhile
        assert any(began < when < ended for _, _, _, when in answers)


def test_restore_then_retries_make_no_duplicates(backed_up, db):
    """Restored as README says (stop, remove -wal and -shm, copy back, check), the backup
    takes the gateway's retries of every guid: each is stored once, counted twice if the
    backup had it."""
    dest, (code, _, err), answers, began, server = backed_up
    assert code == 0, err
    server.stop()
    for name in (db, db + '-wal', db + '-shm'):
        if os.path.exists(name):
            os.remove(name)
    subprocess.check_call(['cp', dest, db])
    code, out, err = cli(db, 'check')
    assert code == 0, out.decode() + err
    in_backup = set(guids(db))
    server = Server(db)
    try:
        pushed = [guid for guid, _, _, _ in answers]
        assert [server.push(guid) for guid in pushed] == [(200, DONE)] * len(pushed)
    finally:
        server.stop()
    stored = rows(db)
    assert len(stored) == len({r['guid'] for r in stored}) == 80000 + len(pushed)
    deliveries = {r['guid']: r['deliveries'] for r in stored}
    assert {deliveries[g] for g in pushed if g in in_backup} == {2}
    assert {deliveries[g] for g in pushed if g not in in_backup} <= {1}


def test_backup_refuses_to_write_over_the_live_database(db):
    """`backup` to the live database's own path (or its -wal) exits 1 and changes nothing."""
    store(db, 'g-1')
    for dest in (db, db + '-wal'):
        code, out, err = cli(db, 'backup', dest)
        assert (code, out) == (1, b'')
        assert err == 'storage.py backup: %s: is the live database; no backup made\n' % dest
    assert guids(db) == ['g-1']


def test_backup_is_not_changed_by_a_wal_file_left_beside_dest(db, tmp_path):
    """A -wal file left beside DEST (an old copy's, or planted) is not played into the new
    backup: the copy read back at DEST holds every message."""
    dest = str(tmp_path / 'backup.sqlite3')
    store(db, 'g-1')
    assert cli(db, 'backup', dest)[0] == 0
    code = ('import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);'
            'c.execute("PRAGMA wal_autocheckpoint = 0"); c.execute("DELETE FROM messages");'
            'os._exit(9)')   # a reader that crashed leaves its -wal: the rows deleted there
    subprocess.call([sys.executable, '-c', code, dest])
    assert os.path.exists(dest + '-wal')
    store(db, 'g-2')
    code, out, err = cli(db, 'backup', dest)
    assert code == 0, err
    assert guids(dest) == ['g-1', 'g-2']


def test_backup_into_a_missing_folder_fails_clearly(db, tmp_path):
    """`backup` into a folder that does not exist exits 1 with one line, creating nothing."""
    store(db, 'g-1')
    dest = str(tmp_path / 'nowhere' / 'backup.sqlite3')
    code, out, err = cli(db, 'backup', dest)
    assert (code, out) == (1, b'')
    [line] = err.splitlines()
    assert line.startswith('storage.py backup: %s: ' % dest) and 'No such file' in line
    assert not os.path.exists(os.path.dirname(dest))


def test_failed_backup_keeps_the_previous_one(db, tmp_path):
    """A database that cannot be read whole gives exit 1, and the backup already at DEST is
    left as it was, with no temporary file beside it."""
    for n in range(200):
        store(db, 'g-%d' % n, message='y' * 300)
    folder = tmp_path / 'backups'
    folder.mkdir()
    dest = str(folder / 'backup.sqlite3')
    assert cli(db, 'backup', dest)[0] == 0
    previous = open(dest, 'rb').read()
    conn = sqlite3.connect(db)
    page_size = conn.execute('PRAGMA page_size').fetchone()[0]
    [root] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()
    conn.close()
    with open(db, 'r+b') as f:  # the root page of the table made garbage
        f.seek((root - 1) * page_size)
        f.write(b'\xff' * page_size)
    code, out, err = cli(db, 'backup', dest)
    assert (code, out) == (1, b'')
    [line] = err.splitlines()
    assert line.startswith('storage.py backup: %s: ' % dest)
    assert line.endswith('; no backup made')
    assert open(dest, 'rb').read() == previous
    assert os.listdir(str(folder)) == ['backup.sqlite3']


def test_interrupted_backup_leaves_nothing(db, tmp_path):
    """Ctrl-C during the copy removes the temporary file: no half copy of the messages stays."""
    prefill(db, 80000)
    folder = tmp_path / 'backups'
    folder.mkdir()
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db, 'backup',
         str(folder / 'backup.sqlite3')], env=clean_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    end = time.monotonic() + 30
    while not os.listdir(str(folder)) and time.monotonic() < end:
        time.sleep(0.002)
    assert os.listdir(str(folder)), 'the backup did not start'
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0 and b'KeyboardInterrupt' in err
    assert os.listdir(str(folder)) == []


# -- purge ------------------------------------------------------------------------------------

@pytest.mark.parametrize('days', ['6', '0', '-7', 'seven', '7.5', '36501', '500000'])
def test_purge_refuses_fewer_than_seven_days(db, days):
    """`purge --older-than` below 7, over 36500 (a cutoff before the year 1000 sorts after
    today as text), or not a whole number is refused before anything is opened, exit 2."""
    store(db, 'g-old', age=30 * DAY)
    code, out, err = cli(db, 'purge', '--older-than', days)
    assert (code, out) == (2, b'')
    assert 'argument --older-than' in err
    if days in ('6', '0', '-7'):
        assert 'below 7' in err and 'stored as a new message' in err
    if days in ('36501', '500000'):
        assert 'is over 36500 days' in err
    assert guids(db) == ['g-old']


def test_purge_deletes_processed_messages_older_than_days(db):
    """Of processed messages, those received more than DAYS days ago go; one a minute short
    of it stays."""
    store(db, 'g-older', age=7 * DAY + 60)
    store(db, 'g-younger', age=7 * DAY - 60)
    store(db, 'g-new')
    code, out, err = cli(db, 'purge', '--older-than', '7')
    assert code == 0, err
    assert out.decode().startswith('deleted 1 messages received before ')
    assert out.decode().endswith('; kept 0 failed or unprocessed\n')
    assert guids(db) == ['g-younger', 'g-new']


def test_purge_keeps_failed_and_unprocessed_messages(db):
    """A failed message, or one whose hook claim expired, is kept and counted."""
    store(db, 'g-done', age=30 * DAY)
    store(db, 'g-failed', age=30 * DAY, state='failed')
    store(db, 'g-stuck', age=30 * DAY, state='processing', claimed_until=time.time() - 60)
    code, out, err = cli(db, 'purge', '--older-than', '10')
    assert code == 0, err
    assert out.decode().endswith(
        '; kept 2 failed or unprocessed (--include-failed deletes them)\n')
    assert guids(db) == ['g-failed', 'g-stuck']


def test_purge_include_failed_spares_a_running_hook(db):
    """--include-failed deletes failed and stuck messages, not one whose hook runs now."""
    store(db, 'g-failed', age=30 * DAY, state='failed')
    store(db, 'g-stuck', age=30 * DAY, state='processing', claimed_until=time.time() - 60)
    store(db, 'g-running', age=30 * DAY, state='processing', claimed_until=time.time() + 300)
    code, out, err = cli(db, 'purge', '--older-than', '10', '--include-failed')
    assert code == 0, err
    assert out.decode().startswith('deleted 2 messages')
    assert guids(db) == ['g-running']


def test_purge_dry_run_deletes_nothing(db):
    """--dry-run lists what it would delete (received_at, guid, state) and deletes nothing."""
    stamp = store(db, 'g-old', age=8 * DAY)
    store(db, 'g-failed', age=8 * DAY, state='failed')
    store(db, 'g-new')
    before = rows(db)
    code, out, err = cli(db, 'purge', '--older-than', '7', '--dry-run')
    assert code == 0, err
    lines = out.decode().splitlines()
    assert lines[0] == '%s\tg-old\tprocessed' % stamp
    assert lines[1].startswith('would delete 1 messages received before ')
    assert len(lines) == 2
    assert rows(db) == before


def test_purge_leaves_no_trace_of_the_text_in_the_files(db):
    """The purged message's text is overwritten, not only unlinked: it is in no file of the
    database's folder afterwards."""
    store(db, 'g-private', message=MARKER, age=30 * DAY)
    store(db, 'g-kept')
    code, out, err = cli(db, 'purge', '--older-than', '7')
    assert code == 0, err
    folder = os.path.dirname(db)
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), 'rb') as f:
            assert MARKER.encode('utf-8') not in f.read(), name
    assert guids(db) == ['g-kept']


def test_purge_batches_delete_everything_due(db):
    """More messages than one batch are all deleted, and counted."""
    prefill(db, commands.BATCH * 2 + 3)
    code, out, err = cli(db, 'purge', '--older-than', '7')
    assert code == 0, err
    assert out.decode().startswith('deleted %d messages' % (commands.BATCH * 2 + 3))
    assert rows(db) == []


# -- export --since, and CSV that no spreadsheet runs -----------------------------------------

@pytest.fixture
def dated(db):
    """Messages received at 08:00:00.000Z on 2026-11-20, a millisecond before and after."""
    for guid, stamp in (('g-before', '2026-11-20T07:59:59.999Z'),
                        ('g-at', '2026-11-20T08:00:00.000Z'),
                        ('g-after', '2026-11-20T08:00:00.001Z')):
        store(db, guid)
        conn = sqlite3.connect(db)
        with conn:
            conn.execute('UPDATE messages SET received_at = ? WHERE guid = ?', (stamp, guid))
        conn.close()
    return db


@pytest.mark.parametrize('since, expected', [
    ('2026-11-20T08:00:00.000Z', ['g-at', 'g-after']),
    ('2026-11-20T08:00:00.001Z', ['g-after']),
    ('2026-11-20T07:59:59.999Z', ['g-before', 'g-at', 'g-after']),
    ('2026-11-20T08:00:00.002Z', []),
    ('2026-11-20T08:00Z', ['g-at', 'g-after']),
    ('2026-11-20T08:00:00', ['g-at', 'g-after']),           # no zone: UTC
    ('2026-11-20 08:00:00Z', ['g-at', 'g-after']),
    ('2026-11-20T15:00+07:00', ['g-at', 'g-after']),       # Vietnam's time
    ('2026-11-20T15:00:00.001+0700', ['g-after']),
    ('2026-11-20T07:00-01:00', ['g-at', 'g-after']),
    ('2026-11-20', ['g-before', 'g-at', 'g-after']),
    ('2026-11-21', []),
])
@pytest.mark.parametrize('fmt', ['csv', 'jsonl'])
def test_export_since_takes_messages_received_at_or_after(dated, since, expected, fmt):
    """`export --since` keeps messages received at or after TIMESTAMP, to the millisecond,
    in whatever form of ISO 8601 it is given."""
    code, out, err = cli(dated, 'export', '--format', fmt, '--since', since)
    assert code == 0, err
    text = out.decode('utf-8')
    if fmt == 'csv':
        got = [r['guid'] for r in csv.DictReader(io.StringIO(text, newline=''))]
    else:
        got = [json.loads(line)['guid'] for line in text.splitlines()]
    assert got == expected


@pytest.mark.parametrize('since', ['20-11-2026', '2026-13-01', '2026-02-30', 'yesterday',
                                   '2026-11-20T08:00:00.0001Z', '2026-11-20T25:00Z', ''])
def test_export_since_refuses_what_is_not_a_time(dated, since):
    """A --since that is not an ISO 8601 time is refused with exit 2, nothing written."""
    code, out, err = cli(dated, 'export', '--since', since)
    assert (code, out) == (2, b'')
    assert 'argument --since' in err


@pytest.mark.parametrize('fmt', ['csv', 'jsonl'])
def test_export_reads_in_batches_and_writes_each_message_once(db, fmt):
    """More messages than one read's batch are all exported, once each, in the order stored."""
    prefill(db, commands.BATCH * 2 + 3)
    code, out, err = cli(db, 'export', '--format', fmt)
    assert code == 0, err
    text = out.decode('utf-8')
    if fmt == 'csv':
        got = [r['guid'] for r in csv.DictReader(io.StringIO(text, newline=''))]
    else:
        got = [json.loads(line)['guid'] for line in text.splitlines()]
    assert got == guids(db) and len(got) == commands.BATCH * 2 + 3


FORMULAS = [
    '=1+2',
    '=HYPERLINK("http://example.com/?"&A1,"Xem")',
    "=cmd|' /C calc'!A0",
    '+84912345678',
    '-2+3',
    '@SUM(A1:A2)',
    '\t=1+2',
    '\r=1+2',
    "'=1+2",
    "'already quoted",
]


@pytest.fixture
def formulas(db):
    """One message per formula, the formula as its guid, phone and message."""
    for text in FORMULAS:
        store(db, text, message=text, phone=text)
    store(db, 'plain', message='Xin chào = 1 + 2 @ nhà', phone='0912345678')
    return db


def test_csv_export_neutralises_formulas(formulas):
    """In the CSV export no field starts with = + - @ a tab or a carriage return: each such
    field (or one starting with ') gets a ' in front, and loses nothing else."""
    code, out, err = cli(formulas, 'export', '--format', 'csv')
    assert code == 0, err
    exported = list(csv.reader(io.StringIO(out.decode('utf-8'), newline='')))[1:]
    for field in (f for row in exported for f in row):
        assert not field.startswith(('=', '+', '-', '@', '\t', '\r'))
    by_id = {int(r[0]): r for r in exported}
    for stored in rows(formulas)[:len(FORMULAS)]:
        row = by_id[stored['id']]
        assert row[1:3] == ["'" + stored['guid'], "'" + stored['phone']]
        assert row[4] == "'" + stored['message']


def test_csv_export_leaves_ordinary_fields_alone(formulas):
    """A field that does not start with a formula character is exported as stored."""
    code, out, _ = cli(formulas, 'export', '--format', 'csv')
    [row] = [r for r in csv.DictReader(io.StringIO(out.decode('utf-8'), newline=''))
             if r['guid'] == 'plain']
    assert (row['message'], row['phone'], row['deliveries']) == (
        'Xin chào = 1 + 2 @ nhà', '0912345678', '1')


def test_csv_export_gives_the_stored_values_back_less_one_quote(formulas):
    """Taking one leading ' from each field that has one gives every stored value back."""
    code, out, _ = cli(formulas, 'export', '--format', 'csv')
    exported = list(csv.DictReader(io.StringIO(out.decode('utf-8'), newline='')))
    stored = rows(formulas)
    assert len(exported) == len(stored)
    for got, want in zip(exported, stored):
        for name in ('guid', 'phone', 'message', 'raw_query', 'received_at'):
            value = got[name][1:] if got[name].startswith("'") else got[name]
            assert value == want[name]


def test_jsonl_export_keeps_formulas_exactly(formulas):
    """The jsonl export is byte for byte json.dumps of each stored row: nothing neutralised."""
    code, out, err = cli(formulas, 'export', '--format', 'jsonl')
    assert code == 0, err
    expected = b''.join(json.dumps(r, ensure_ascii=False).encode('utf-8') + b'\n'
                        for r in rows(formulas))
    assert out == expected
    assert [json.loads(line)['message'] for line in out.splitlines()][:len(FORMULAS)] \
        == FORMULAS


def test_export_help_says_how_csv_is_neutralised(db):
    """`export --help` tells what is done to a formula and how to undo it."""
    code, out, _ = cli(db, 'export', '--help')
    text = ' '.join(out.decode().split())
    assert code == 0
    assert "= + - @ a tab, a carriage return, NUL or ' gets a ' in front" in text
    assert "remove one leading ' from such a field to get the stored value" in text
    assert 'JSON Lines holds every value exactly' in text


@pytest.mark.parametrize('fmt', ['csv', 'jsonl'])
def test_export_writes_utf8_in_the_c_locale(db, fmt):
    """Under cron's C locale, export still writes the Vietnamese letters, as UTF-8."""
    store(db, 'g-vi', message=MARKER)
    env = {k: v for k, v in clean_env().items()
           if not k.startswith('LC_') and k not in ('LANG', 'PYTHONIOENCODING', 'PYTHONUTF8')}
    env['LC_ALL'] = 'C'
    code, out, err = cli(db, 'export', '--format', fmt, env=env)
    assert code == 0, err
    assert MARKER.encode('utf-8') in out


# -- check's findings -------------------------------------------------------------------------

def problems(out):
    """The lines of `check` that report a problem."""
    return [line for line in out.decode().splitlines() if line.endswith('<-- PROBLEM')]


def report(out):
    return dict(line.split(None, 1) for line in out.decode().splitlines())


def failing_hook(message):
    raise RuntimeError('the shop system is down')


def test_check_names_an_older_database_the_receiver_no_longer_uses(db, tmp_path):
    """A set-up from before the settings file kept ~/.fibosms/messages.sqlite3, and the
    receiver goes on using it while ~/fibosms-data does not exist (receiver.config_path).
    Once it does, check names the older one, whatever --db it is given, until it is renamed;
    a broken link there is no finding and stops no other."""
    older = tmp_path / '.fibosms' / 'messages.sqlite3'
    store(str(older), 'g-old')
    copy = str(tmp_path / 'copy.sqlite3')
    store(copy, 'g-copy')
    assert not os.path.exists(os.path.dirname(db))
    for used in (str(older), copy):
        code, out, err = cli(used, 'check')
        assert code == 0 and b'older_db' not in out, out
    store(db, 'g-new')      # ~/fibosms-data: the receiver's from now on
    finding = ('older_db:      %s, from before the settings file, is not the database the'
               ' receiver uses: read it with --db, then rename it   <-- PROBLEM' % older)
    for used in (db, str(older)):
        code, out, err = cli(used, 'check')
        assert code == 1 and problems(out) == [finding], out
    older.rename(older.with_name('messages.sqlite3.old'))
    older.symlink_to(tmp_path / 'nowhere')
    code, out, err = cli(db, 'check')
    assert code == 0 and b'older_db' not in out and b'last_push' in out, out


def test_check_reports_messages_whose_hook_failed(make_client, db):
    """Messages whose hook failed are one finding: their count and the oldest, exit 1."""
    client = make_client(handler=failing_hook)
    for guid in ('g-1', 'g-2'):
        client.get('/', {'guid': guid, 'phone': '0912345678'}, status=200,
                   expect_errors=True)
    oldest = rows(db)[0]['received_at']
    code, out, err = cli(db, 'check')
    assert code == 1, err
    assert problems(out) == [
        'hook_failed:   2 messages waiting for retry, the oldest received %s   <-- PROBLEM'
        % oldest]


def test_check_counts_a_hook_claim_that_expired(db):
    """A message whose hook claim ran out (its process died) waits too."""
    store(db, 'g-stuck', state='processing', claimed_until=time.time() - 1)
    store(db, 'g-running', state='processing', claimed_until=time.time() + 300)
    code, out, _ = cli(db, 'check')
    assert code == 1
    assert report(out)['hook_failed:'].startswith('1 messages waiting for retry')


def test_check_is_quiet_about_processed_messages(db):
    """Processed messages and no --max-silence: no finding, exit 0."""
    store(db, 'g-1', age=3 * DAY)
    code, out, err = cli(db, 'check')
    assert code == 0, out.decode() + err
    assert problems(out) == []
    assert report(out)['hook_failed:'] == '0 messages waiting for retry'
    assert report(out)['last_push:'].endswith(', 72.0 hours ago')


@pytest.mark.parametrize('hours, finding', [('4', True), ('4.9', True), ('5.1', False),
                                            ('48', False)])
def test_check_max_silence(db, hours, finding):
    """With --max-silence HOURS, a last push longer ago than that is a finding, exit 1."""
    stamp = store(db, 'g-1', age=5 * 3600)
    code, out, err = cli(db, 'check', '--max-silence', hours)
    assert code == (1 if finding else 0), out.decode() + err
    line = '%s, 5.0 hours ago' % stamp
    assert problems(out) == (['last_push:     %s   <-- PROBLEM' % line] if finding else [])
    assert report(out)['last_push:'].startswith(line)


def test_check_max_silence_counts_retries_as_pushes(db):
    """A retry of an old guid is a push received: its time is the last push's."""
    store(db, 'g-1', age=10 * 3600)
    conn = storage.connect(db)
    storage.deliver(conn, {'guid': 'g-1', 'phone': '0912345678', 'message': 'hello',
                           'charset': 'utf-8', 'raw_query': ''})
    conn.close()
    code, out, _ = cli(db, 'check', '--max-silence', '1')
    assert code == 0, out.decode()


def test_check_max_silence_on_a_database_never_pushed_to(db):
    """No push at all is a finding too when --max-silence is given."""
    storage.connect(db).close()
    assert cli(db, 'check')[0] == 0
    code, out, _ = cli(db, 'check', '--max-silence', '24')
    assert code == 1
    assert problems(out) == ['last_push:     none   <-- PROBLEM']


@pytest.mark.parametrize('hours', ['0', '-1', 'a day', 'nan'])
def test_check_max_silence_must_be_hours_above_zero(db, hours):
    """--max-silence of no hours, or not a number, is refused, exit 2."""
    storage.connect(db).close()
    code, out, err = cli(db, 'check', '--max-silence', hours)
    assert (code, out) == (2, b'')
    assert 'argument --max-silence' in err


def test_check_warns_of_a_database_on_tmpfs(tmp_path):
    """A database on tmpfs (gone at the next reboot) is a finding, exit 1."""
    folder = tempfile.mkdtemp(dir='/dev/shm')
    try:
        db = os.path.join(folder, 'data', 'messages.sqlite3')
        assert storage.filesystem_type(db) == 'tmpfs'  # the test's own premise
        store(db, 'g-1')
        code, out, _ = cli(db, 'check')
        assert code == 1
        assert problems(out) == ['filesystem:    tmpfs, emptied at every reboot   <-- PROBLEM']
    finally:
        shutil.rmtree(folder)


def test_check_names_a_disk_filesystem_without_a_finding(db):
    """On the test's own disk, `check` names the filesystem type and finds nothing."""
    store(db, 'g-1')
    code, out, _ = cli(db, 'check')
    assert report(out)['filesystem:'] == storage.filesystem_type(db)
    assert code == 0, out.decode()


def test_check_prints_one_line_per_finding(db):
    """Several problems give one line each; --quiet prints those lines and nothing else."""
    store(db, 'g-1', state='failed', age=3600)
    os.chmod(db, 0o644)
    code, out, _ = cli(db, 'check', '--max-silence', '0.5', '--quiet')
    assert code == 1
    lines = out.decode().splitlines()
    assert [line.split()[0] for line in lines] == ['file:', 'place:', 'hook_failed:',
                                                   'last_push:']
    assert lines == problems(out)


def test_check_quiet_prints_nothing_when_all_is_well(db):
    """`check --quiet` on a healthy database prints nothing and exits 0: cron sends no mail."""
    store(db, 'g-1')
    code, out, err = cli(db, 'check', '--quiet', '--max-silence', '1')
    assert (code, out, err) == (0, b'', '')


# -- control characters kept off the terminal -------------------------------------------------

HOSTILE = '\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\r\nline\ttab\\x1b\x7f'
HOSTILE_SHOWN = r'\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\r\nline\ttab\\x1b\x7f'


@pytest.fixture
def hostile(client, db):
    """A message whose guid, phone and text carry terminal escapes, pushed through the app."""
    client.get('/', {'guid': 'g' + HOSTILE, 'phone': '\x1b[8m0912', 'message': HOSTILE})
    return db


def assert_terminal_safe(text):
    """No control character but the line ends (and list's column tabs) is left in `text`."""
    for line in text.split('\n'):
        bad = [c for c in line.replace('\t', '') if ord(c) < 32 or 0x7f <= ord(c) < 0xa0
               or c in '\u202e\u2028\u2029']
        assert bad == [], line


def test_list_escapes_control_characters(hostile):
    """`list` shows escapes in guid, phone and message as \\x1b, \\n ..., never raw."""
    code, out, _ = cli(hostile, 'list')
    assert code == 0
    text = out.decode('utf-8')
    assert_terminal_safe(text)
    [line] = text.splitlines()[1:]
    fields = line.split('\t')
    assert len(fields) == len(commands.LIST_COLUMNS)
    assert fields[1] == 'g' + HOSTILE_SHOWN
    assert fields[2] == '\\x1b[8m0912'
    assert fields[5] == HOSTILE_SHOWN


def test_show_escapes_control_characters(hostile):
    """`show` escapes every field it prints, and names an unknown guid escaped too."""
    code, out, _ = cli(hostile, 'show', 'g' + HOSTILE)
    assert code == 0
    text = out.decode('utf-8')
    assert_terminal_safe(text)
    fields = dict(line.split(None, 1) for line in text.splitlines() if ' ' in line.strip())
    assert fields['guid:'] == 'g' + HOSTILE_SHOWN
    assert fields['message:'] == HOSTILE_SHOWN
    assert fields['phone:'] == '\\x1b[8m0912'
    code, out, err = cli(hostile, 'show', 'x' + HOSTILE)
    assert code == 1
    assert_terminal_safe(err.rstrip('\n'))


def test_list_keeps_unicode_letters(db):
    """Escaping leaves Vietnamese letters alone."""
    store(db, 'g-vi', message=MARKER)
    code, out, _ = cli(db, 'list')
    assert out.decode('utf-8').splitlines()[1].split('\t')[5] == MARKER


def test_export_to_a_terminal_is_refused(db):
    """`export` writes text as sent, escape codes included: not to a terminal (a pty here)."""
    import pty
    store(db, 'g-1', message='\x1b]0;pwned\x07')
    main, side = pty.openpty()
    try:
        done = subprocess.run([sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db,
                               'export'], env=clean_env(), stdout=side,
                              stderr=subprocess.PIPE, timeout=60)
        os.close(side)
        side = None
        assert done.returncode == 2
        assert b'send it to a file or a pipe' in done.stderr
        assert b'pwned' not in read_all(main)
    finally:
        if side is not None:
            os.close(side)
        os.close(main)


def read_all(fd):
    """What a pty's other side has written, without waiting for more."""
    import select
    data = b''
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:   # the other side is closed
            break
        if not chunk:
            break
        data += chunk
    return data


# -- One settings file: the commands find what the receiver uses -----------------------------

def home_cli(home, *args, **env):
    """`python3 storage.py ARGS...` with no --db, HOME=`home`: as the receiver's user would."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'storage.py')] + list(args),
                          env=clean_env(HOME=str(home), **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    return done.returncode, done.stdout.decode('utf-8'), done.stderr.decode('utf-8')


def test_commands_find_the_settings_database_and_log_with_no_flag(tmp_path, make_client, db):
    """With no flag and no setting in the environment, list, check and log read the data
    folder the receiver writes: ~/fibosms-data."""
    write_settings(db, 'FIBOSMS_TOKEN=a-secret-of-the-file-99')
    client = make_client(db=None)
    assert client.get('/a-secret-of-the-file-99/?guid=g-home&phone=1').body == DONE
    client.get('/wrong-secret/?guid=g-2&phone=1', status=403, expect_errors=True)
    code, out, err = home_cli(tmp_path, 'list')
    assert code == 0 and 'g-home' in out, err
    code, out, err = home_cli(tmp_path, 'check')
    assert code == 0 and 'settings:      %s' % os.path.join(os.path.dirname(db),
                                                         'settings.env') in out, out + err
    code, out, err = home_cli(tmp_path, 'log')
    assert code == 0 and out.strip().endswith(
        'answered 1 (HTTP 403): wrong or missing token'), out + err


@pytest.mark.parametrize('line, finding', [
    ('FIBOSMS_TOKEN=change-me-to-a-long-random-secret', 'FIBOSMS_TOKEN is still the example'),
    ('FIBOSMS_TOKEN=short', 'FIBOSMS_TOKEN is shorter than 12 characters'),
    ('FIBOSMS_TOKN=a-secret-of-the-file-99', 'FIBOSMS_TOKN is no setting: a typing mistake?'),
    ('FIBOSMS_TOKEN a-secret-of-the-file-99', 'line 1: not FIBOSMS_NAME=value: ignored'),
    ('FIBOSMS_ALLOW=203.0.113.0/24, nowhere', "FIBOSMS_ALLOW: 'nowhere' is not an address"),
    ('FIBOSMS_JOURNAL=sideways', "FIBOSMS_JOURNAL 'sideways' is not one of"),
    ('FIBOSMS_FORWARD_URL=ftp://app.example', 'FIBOSMS_FORWARD_URL is not http://host/path'),
    ('FIBOSMS_FORWARD_URL=https://app.example/x\nFIBOSMS_FORWARD_SECRET=whsec_short',
     'FIBOSMS_FORWARD_SECRET is not whsec_'),
    ('FIBOSMS_HANDLER=no_such_module_here:handle', "No module named 'no_such_module_here'"),
])
def test_check_names_a_settings_mistake_before_a_push_meets_it(tmp_path, db, line, finding):
    """check reads the settings file as the receiver does and names each mistake in it as a
    problem (exit 1): an example or short secret, a name that is no setting, a line that is
    not NAME=value, an address, journal, forward or hook setting that cannot work."""
    store(db, 'g-1')
    write_settings(db, line)
    code, out, err = home_cli(tmp_path, 'check')
    assert code == 1, out + err
    problems = [l for l in out.splitlines() if l.endswith('<-- PROBLEM')]
    assert any(p.startswith('settings:') and finding in p for p in problems), out


def test_check_names_forwarding_set_without_forward_py(tmp_path, db):
    """FIBOSMS_FORWARD_URL set in a set-up where forward.py was not uploaded: check says so
    (the receiver stores the pushes all the same, marked failed: test_forward_deploy)."""
    code_dir = tmp_path / 'code'
    code_dir.mkdir()
    for name in os.listdir(ROOT):
        if name.endswith('.py') and name != 'forward.py':
            shutil.copy(os.path.join(ROOT, name), str(code_dir / name))
    store(db, 'g-1')
    write_settings(db, 'FIBOSMS_FORWARD_URL=https://app.example/x')
    done = subprocess.run([sys.executable, str(code_dir / 'storage.py'), 'check'],
                          env=clean_env(HOME=str(tmp_path)), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    out = done.stdout.decode()
    assert done.returncode == 1 and 'forward.py is not beside receiver.py: upload it' in out, out


def test_a_command_on_another_users_data_says_whose_it_is(tmp_path, db):
    """Run as root on the data of the receiver's user, a command refuses (a file it made
    there, root's, would lock the receiver out) and names the user to run it as."""
    if os.geteuid() != 0:
        pytest.skip('needs root, to give the data away')
    store(db, 'g-1')
    os.chown(os.path.dirname(db), 65534, 65534)
    code, out, err = cli(db, 'list')
    assert code == 1 and out == b''
    assert 'the data belongs to uid 65534 (nobody): run this as that user, e.g. sudo -u nobody' \
        in err, err


def test_retry_forwards_with_the_settings_file_alone(tmp_path, db):
    """retry takes the forward and its secret from the settings file: no secret on a command
    line nor in a crontab (the forward itself: test_forward)."""
    store(db, 'g-1', state='failed')
    write_settings(db, 'FIBOSMS_FORWARD_URL=http://127.0.0.1:%d/hook' % support.free_port())
    code, out, err = home_cli(tmp_path, 'retry')
    assert code == 1 and out.startswith('g-1 failed: forward to 127.0.0.1:'), out + err
    assert 'ConnectionRefusedError' in out


def test_log_prints_the_newest_lines_escaped(tmp_path, make_client, db):
    """storage.py log --lines N: the last N lines of receiver.log, control characters
    escaped, the older file receiver.log.1 read too."""
    make_client(token='a-long-enough-secret')
    os.makedirs(os.path.dirname(db), mode=0o700)
    client = make_client(token='a-long-enough-secret')
    for n in range(3):
        client.get('/x/?guid=g%d\x1b[2J&phone=1' % n, status=403, expect_errors=True)
    client.get('/a-long-enough-secret/?guid=g\x1b&phone=', status=400, expect_errors=True)
    code, out, err = home_cli(tmp_path, 'log', '--lines', '2')
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2, out + err
    assert lines[-1].endswith("answered 1 (HTTP 400): phone missing or empty (guid 'g\\\\x1b')")
    assert '\x1b' not in out


def hostile_hook(message):
    raise RuntimeError('refused: ' + HOSTILE)


def test_retry_prints_guid_and_error_escaped(tmp_path, make_client, db):
    """`retry` names each message by its guid, escaped: a guid with terminal escapes cannot
    reach the terminal."""
    make_client(handler=hostile_hook).get(
        '/', {'guid': 'g' + HOSTILE, 'phone': '0912345678'}, status=200, expect_errors=True)
    (tmp_path / 'hostilehook.py').write_text(
        'def run(message):\n    raise RuntimeError("again: " + %r)\n' % HOSTILE)
    code, out, err = cli(db, 'retry', '--handler', 'hostilehook:run',
                         env=clean_env(PYTHONPATH=str(tmp_path)))
    assert code == 1, err
    text = out.decode('utf-8')
    assert_terminal_safe(text)
    assert text.startswith('g' + HOSTILE_SHOWN + ' failed: ')
