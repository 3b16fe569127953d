"""The operator's command line, `python3 storage.py`, run as a real process over a database
filled through the receiver."""
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys

import pytest

import commands
import storage
from conftest import DONE, ROOT, rows

VIETNAMESE = ('Xin chào! Tôi muốn đặt 2 bánh mì, giao đến "12 Nguyễn Huệ"\n'
              'Quận 1 — cảm ơn ạ')
PUSHES = [
    {'guid': 'g-vi', 'phone': '+84912345678', 'message': VIETNAMESE},
    {'guid': 'g-ascii', 'phone': '0987654321', 'message': 'HELLO'},
    {'guid': 'g-empty', 'phone': '84901234567', 'message': ''},
    {'guid': 'g-vi', 'phone': '+84912345678', 'message': VIETNAMESE},   # a retry
]


def run_cli(db, *args, **environment):
    """`python3 storage.py --db DB ARGS...` in a clean environment plus `environment`;
    returns (exit code, stdout, stderr), both decoded as UTF-8."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
    env.update(environment)
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db]
                          + list(args), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)
    return done.returncode, done.stdout.decode('utf-8'), done.stderr.decode('utf-8')


@pytest.fixture
def filled(client, db):
    """The database after PUSHES went through the receiver: three messages, one retried."""
    for params in PUSHES:
        assert client.get('/', params).body == DONE
    return db


def test_list_shows_each_message(filled):
    """`list` prints a header and one line per message, newest first."""
    code, out, _ = run_cli(filled, 'list')
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split('\t') == list(commands.LIST_COLUMNS)
    assert [line.split('\t')[1] for line in lines[1:]] == ['g-empty', 'g-ascii', 'g-vi']


def test_list_keeps_one_line_per_message(filled):
    """`list` shows a message's newline as \\n and shortens it to 60 characters and '...'."""
    code, out, _ = run_cli(filled, 'list')
    vi = [line for line in out.splitlines() if '\tg-vi\t' in line][0]
    text = vi.split('\t')[-1]
    assert text == VIETNAMESE[:60].replace('\n', '\\n') + '...'
    assert vi.split('\t')[4] == '2'


def test_show_prints_every_column(filled):
    """`show GUID` prints each column of the message, the text unchanged but for its
    newline, shown as \\n."""
    code, out, _ = run_cli(filled, 'show', 'g-vi')
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines() if ' ' in line.strip())
    assert set(fields) >= {c + ':' for c in ('guid', 'phone', 'state', 'deliveries')}
    assert fields['guid:'] == 'g-vi'
    assert fields['deliveries:'] == '2'
    assert fields['message:'] == VIETNAMESE.replace('\n', '\\n')


def test_show_unknown_guid_exits_1(filled):
    """`show` of a guid that was never stored says so on stderr and exits 1."""
    code, out, err = run_cli(filled, 'show', 'no-such-guid')
    assert code == 1
    assert out == ''
    assert "no-such-guid" in err


def test_export_csv_round_trips(filled):
    """`export --format csv` parses back with csv to the stored rows; a phone that starts
    with + has a ' in front (a formula to a spreadsheet otherwise)."""
    code, out, _ = run_cli(filled, 'export', '--format', 'csv')
    assert code == 0
    exported = list(csv.DictReader(io.StringIO(out, newline='')))
    stored = rows(filled)
    assert [r['guid'] for r in exported] == ['g-vi', 'g-ascii', 'g-empty']
    assert [r['message'] for r in exported] == [VIETNAMESE, 'HELLO', '']
    assert [r['phone'] for r in exported] == ["'+84912345678", '0987654321', '84901234567']
    assert [r['phone'] for r in stored] == ['+84912345678', '0987654321', '84901234567']
    assert list(exported[0]) == list(stored[0])


def test_export_jsonl_round_trips(filled):
    """`export --format jsonl` gives one JSON object a line, equal to the stored rows."""
    code, out, _ = run_cli(filled, 'export', '--format', 'jsonl')
    assert code == 0
    exported = [json.loads(line) for line in out.splitlines()]
    assert exported == rows(filled)
    assert exported[0]['message'] == VIETNAMESE


def test_export_jsonl_writes_utf8_not_escapes(filled):
    """The jsonl export holds the Vietnamese letters themselves, not \\u escapes."""
    code, out, _ = run_cli(filled, 'export', '--format', 'jsonl')
    assert 'Nguyễn Huệ' in out


def test_stats_counts_messages_and_duplicates(filled):
    """`stats` counts messages, deliveries, duplicates and messages by state."""
    code, out, _ = run_cli(filled, 'stats')
    assert code == 0
    counts = dict(line.split(None, 1) for line in out.splitlines())
    assert (counts['messages:'], counts['deliveries:'], counts['duplicates:'],
            counts['processed:']) == ('3', '4', '1', '3')


def check_report(out):
    """`check` output as {name: value}."""
    return dict(line.split(None, 1) for line in out.splitlines())


def test_check_passes_on_a_healthy_database(filled):
    """`check` reports ok, full, wal, 600 and 700 and exits 0."""
    code, out, _ = run_cli(filled, 'check')
    assert code == 0, out
    report = check_report(out)
    assert report['integrity:'] == 'ok'
    assert report['journal_mode:'] == 'wal'
    assert report['synchronous:'] == 'full'
    assert report['file:'] == '%s 600' % filled
    assert report['directory:'] == '%s 700' % os.path.dirname(filled)
    assert report['schema:'] == str(storage.SCHEMA_VERSION)
    assert 'PROBLEM' not in out


def journal_mode(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute('PRAGMA journal_mode').fetchone()[0]
    finally:
        conn.close()


def test_check_honours_fibosms_journal(make_client, db):
    """With FIBOSMS_JOURNAL=delete, `check` expects and reports the rollback journal."""
    make_client(journal='delete').get('/?guid=g-1&phone=0912345678')
    code, out, _ = run_cli(db, 'check', FIBOSMS_JOURNAL='delete')
    assert code == 0, out
    assert check_report(out)['journal_mode:'] == 'delete'


def test_check_does_not_change_the_journal_mode(make_client, db):
    """`check` flags a database in another journal mode than expected; it does not switch it."""
    make_client(journal='delete').get('/?guid=g-1&phone=0912345678')
    code, out, _ = run_cli(db, 'check')
    assert journal_mode(db) == 'delete'
    assert check_report(out)['journal_mode:'].startswith('delete')
    assert code == 1


@pytest.mark.parametrize('which, bits', [
    ('file', 0o644),
    ('file', 0o640),
    ('directory', 0o755),
])
def test_check_flags_readable_by_others(filled, which, bits):
    """`check` marks a file or directory others may read and exits 1."""
    os.chmod(filled if which == 'file' else os.path.dirname(filled), bits)
    code, out, _ = run_cli(filled, 'check')
    assert code == 1
    [line] = [line for line in out.splitlines() if line.startswith(which + ':')]
    assert line.endswith('%o   <-- PROBLEM' % bits)


def test_check_names_a_place_another_user_controls(filled):
    """`check` reports, on its `place` line, a folder above the database open to others."""
    above = os.path.dirname(os.path.dirname(filled))
    os.chmod(above, 0o777)
    code, out, _ = run_cli(filled, 'check')
    assert code == 1
    [line] = [line for line in out.splitlines() if line.startswith('place:')]
    assert 'folder %s above the data is writable by group or others' % above in line
    assert line.endswith('<-- PROBLEM')


def test_newer_schema_is_a_clear_error(filled):
    """A database of a newer schema gives a one-line error naming it, and exit 1."""
    conn = sqlite3.connect(filled)
    conn.execute('PRAGMA user_version = %d' % (storage.SCHEMA_VERSION + 1))
    conn.close()
    code, out, err = run_cli(filled, 'list')
    assert code == 1
    assert out == ''
    [line] = err.splitlines()
    assert line.startswith('storage.py: %s: ' % filled) and 'newer' in line


@pytest.mark.parametrize('command', [['list'], ['show', 'g-1'], ['export'], ['stats'],
                                     ['check'], ['retry', '--handler', 'os:getcwd']])
def test_missing_database_is_an_error(tmp_path, command):
    """Every command on a missing database says so, exits 1 and creates nothing."""
    db = str(tmp_path / 'nowhere' / 'messages.sqlite3')
    code, out, err = run_cli(db, *command)
    assert code == 1
    assert err.strip() == 'storage.py: %s: no database at %s' % (db, db)
    assert not os.path.exists(os.path.dirname(db))
