"""Catch-up (``python3 storage.py catchup``, fiboapi.py) as a real process against the emulator,
whose gateway pushes to a real receiving page on 127.0.0.1: the SMS the push lost stored once,
marked fetched; those a push stored not stored again; the undecided left to the operator; the
states taken; the window; failures; check's lines."""
import json
import os
import sqlite3
import threading
import time

import pytest

import fiboapi
import receiver
import smallserver
import support
from support import Application
from conftest import rows
from test_fiboapi import (PASSWORD, configure, emulator, run, start,  # noqa: F401 (fixture)
                          assert_no_secret)

PHONE = '0912345678'


@pytest.fixture
def page(db):
    """The receiving page (the small server, in this process) reading the settings file
    beside `db`: its URL, with the secret."""
    server = smallserver.make_server('127.0.0.1', 0, receiver.make_app())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield 'http://127.0.0.1:%d/%s' % (server.server_address[1], support.TOKEN)
    server.shutdown()
    server.server_close()


@pytest.fixture
def app():
    application = Application()
    yield application
    application.stop()


def down():
    """A page that is down: nothing listens there."""
    return 'http://127.0.0.1:%d/%s' % (support.free_port(), support.TOKEN)


def lose(emu, *texts, **kwargs):
    """SMS the page never gets: pushed 5 times to a page that is down, NoClientResponse."""
    emu.page = down()
    sent = [emu.receive(kwargs.get('phone', PHONE), text) for text in texts]
    emu.wait_idle()
    assert [s['status'] for s in sent] == [5] * len(sent)
    return sent


def deliver(emu, page, *texts):
    """SMS the gateway pushes to the page, until it answers 2 or gives up."""
    emu.page = page
    sent = [emu.receive(PHONE, text) for text in texts]
    emu.wait_idle()
    return sent


def fetched_rows(db):
    return [r for r in rows(db) if fiboapi.fetched(r)]


def decisions(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute('SELECT sms_id, decision, guid FROM fiboapi_sms ORDER BY sms_id'
                            ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize('design', ['uuid', 'id'])
def test_the_sms_the_push_lost_are_stored_once_marked_fetched(db, emulator, page, design):
    """Each lost SMS becomes a message of its own, guid fibosms-api-<id>, empty raw_query, the
    API's fields in extra; a pushed one is not; a second run stores nothing more."""
    configure(db, emulator)
    emulator.guid = design
    deliver(emulator, page, 'pushed')
    lose(emulator, 'một', 'hai')
    code, out, err = run(db, 'catchup')
    assert code == 0, err
    assert '63 lost: stored as fibosms-api-63' in out and '64 lost' in out
    assert out.splitlines()[-1] == ('catchup: 3 SMS in the last 1440 minutes, 2 lost: 2 stored'
                                    ' now, 0 stored by a push, 0 undecided')
    found = fetched_rows(db)
    assert [(r['guid'], r['phone'], r['phone_normalised'], r['message'], r['raw_query'],
             r['state'], r['deliveries']) for r in found] == [
        ('fibosms-api-%d' % n, '+84912345678', '84912345678', text, '', 'processed', 1)
        for n, text in ((63, 'một'), (64, 'hai'))]
    extra = json.loads(found[0]['extra'])['fibosms_api']
    assert (extra['id'], extra['state'], extra['service_type_name']) == ('63', 5, '8022(FIBO)')
    assert fiboapi.parse_date(extra['createddate']) is not None
    [pushed] = [r for r in rows(db) if not fiboapi.fetched(r)]
    assert pushed['message'] == 'pushed'
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute('SELECT guid FROM messages WHERE ' + fiboapi.FETCHED_SQL
                                       + ' ORDER BY id')] == ['fibosms-api-63', 'fibosms-api-64']
    conn.close()
    assert run(db, 'catchup')[0] == 0
    assert len(rows(db)) == 3
    assert PHONE not in out and 'một' not in out


@pytest.mark.parametrize('state', [0, 1, 2, 3, 4])
def test_only_no_client_response_is_taken(db, emulator, state):
    """JustReceived, Processing (the push will still deliver them), Confirmed (delivered),
    WrongSyntax, Expired (not lost by the push) are listed and left alone."""
    configure(db, emulator)
    emulator.receive(PHONE, 'khác', status=state)
    emulator.receive(PHONE, 'mất', status=5)
    code, out, _ = run(db, 'catchup')
    assert code == 0
    assert [r['message'] for r in rows(db)] == ['mất']
    assert out.splitlines()[-1].startswith('catchup: 2 SMS in the last 1440 minutes, 1 lost')


@pytest.mark.parametrize('design', ['uuid', 'id'])
def test_a_push_stored_but_answered_1_is_not_stored_again(db, emulator, page, app, design):
    """The page stored the SMS but its hook failed, so each try was answered 1 and the gateway
    gave up: catch-up finds the push's row (same guid, or same phone and text) and stores
    nothing; retry then forwards it."""
    configure(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url)
    emulator.guid = design
    app.status = 500
    [sms] = deliver(emulator, page, 'DK VIP')
    assert sms['status'] == 5 and [r['state'] for r in rows(db)] == ['failed']
    code, out, _ = run(db, 'catchup')
    assert code == 0
    assert '62 stored by a push: %s' % sms['guid'] in out
    assert [r['guid'] for r in rows(db)] == [sms['guid']]
    assert decisions(db) == [('62', 'pushed', sms['guid'])]
    app.status = 204
    assert run(db, 'retry')[0] == 0
    assert [r['state'] for r in rows(db)] == ['processed']


@pytest.mark.parametrize('pushed, offset, outcome', [
    ('Xin chào', 0, 'stored by a push'),
    ('Xin chào ', -2 * 3600, 'stored by a push'),       # padding; within the window
    ('xin  CHAO!', 0, 'undecided'),                     # a near match
    ('Xin chào', 4 * 3600, 'lost'),                     # outside the window: another SMS
    ('Tạm biệt', 0, 'lost'),                            # another text
])
def test_a_lost_sms_against_a_push_of_its_phone(db, emulator, page, pushed, offset, outcome):
    """Matched on the phone (normalised), the text and the time: one exact row is the SMS;
    a text the same but for case, spaces or accents is undecided; else it is new."""
    configure(db, emulator)
    assert support.get(page + '?' + support.push_query(pushed, '0912 345 678', 'g-1')).body == (
        support.DONE)
    emulator.receive('+84912345678', 'Xin chào', status=5, created=time.time() + offset)
    code, out, _ = run(db, 'catchup')
    assert ('62 %s' % outcome) in out
    assert code == (1 if outcome == 'undecided' else 0)
    assert len(rows(db)) == (2 if outcome == 'lost' else 1)


def test_two_sms_of_one_phone_and_text_and_one_row_are_left_to_the_operator(
        db, emulator, page, app):
    """"DK" sent twice, one stored by a push answered 1, one lost: which is which cannot be
    told, so neither is guessed; check names them; --store and --ignore decide, once."""
    configure(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url)
    app.status = 500
    deliver(emulator, page, 'DK')
    lose(emulator, 'DK')
    app.status = 204
    code, out, _ = run(db, 'catchup')
    assert code == 1
    assert '62 undecided: 1 pushed of this phone and text' in out and '63 undecided' in out
    code, out, _ = run(db, 'check')
    assert code == 1
    [line] = [line for line in out.splitlines() if line.startswith('undecided:')]
    assert '2 lost SMS not stored: 62 (' in line and line.endswith('<-- PROBLEM')
    code, out, _ = run(db, 'catchup', '--store', '63')
    assert (code, out) == (0, '63 stored as fibosms-api-63, hook succeeded\n')
    assert run(db, 'catchup', '--ignore', '62')[:2] == (0, '62 ignored\n')
    assert run(db, 'catchup', '--store', '63')[0] == 1      # decided: not again
    code, out, _ = run(db, 'check')
    assert 'undecided:' not in out
    assert run(db, 'catchup')[0] == 0
    assert [r['guid'].startswith('fibosms-api-') for r in rows(db)] == [False, True]
    assert decisions(db) == [('62', 'ignored', None), ('63', 'stored', 'fibosms-api-63')]


def test_a_push_whose_guid_is_the_id_with_another_text_is_undecided(db, emulator, page):
    """A push with the SMS's id as guid but another text: not the same SMS, nor surely
    another: undecided."""
    configure(db, emulator)
    support.get(page + '?' + support.push_query('khác hẳn', PHONE, '62'))
    emulator.receive(PHONE, 'DK', status=5)
    code, out, _ = run(db, 'catchup')
    assert code == 1 and '62 undecided: a push has its id as guid' in out
    assert len(rows(db)) == 1


def test_an_sms_holding_a_secret_is_never_stored(db, emulator):
    """An SMS holding the page's secret or the API password is stored nowhere, its text not
    kept for --store either; the output and the database never hold them."""
    configure(db, emulator)
    emulator.receive(PHONE, 'link ' + support.TOKEN, status=5)
    emulator.receive(PHONE, 'pw ' + PASSWORD, status=5)
    code, out, err = run(db, 'catchup')
    assert code == 1 and out.count('undecided: it holds FIBOSMS_TOKEN or the API') == 2
    assert run(db, 'catchup', '--store', '62')[0] == 1
    assert rows(db) == []
    for name in os.listdir(os.path.dirname(db)):
        with open(os.path.join(os.path.dirname(db), name), 'rb') as f:
            data = f.read()
        assert PASSWORD.encode() not in data or name == 'settings.env'
        assert support.TOKEN.encode() not in data or name == 'settings.env'
    assert_no_secret(out, err)


def test_a_hostile_sms_is_stored_as_text(db, emulator):
    """Control and bidirectional characters, markup and 10 KiB arrive as text (a control
    character XML cannot carry as U+FFFD); list shows them escaped."""
    configure(db, emulator)
    text = '\x1b]0;pwned\x07 <b>&amp;</b> \u202egnp.exe ' + 'x' * 10240
    emulator.receive(PHONE, text, status=5)
    assert run(db, 'catchup')[0] == 0
    [row] = rows(db)
    assert row['message'] == text.replace('\x1b', '\ufffd').replace('\x07', '\ufffd')
    code, out, _ = run(db, 'list')
    assert '\x1b' not in out and '\u202e' not in out and '\\u202e' in out


def test_two_runs_at_once_while_pushes_arrive_store_each_sms_once(db, emulator, page, app):
    """Two catch-ups at once, while the gateway pushes other SMS to the page: each lost SMS
    is one row, delivered and forwarded once, decided by one run."""
    configure(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url)
    lost = lose(emulator, *['tin %d' % n for n in range(15)])
    emulator.page = page
    first, second = start(db, 'catchup'), start(db, 'catchup')
    pushed = [emulator.receive(PHONE, 'đến %d' % n) for n in range(10)]
    outs = [process.communicate(timeout=60)[0].decode() for process in (first, second)]
    emulator.wait_idle()
    assert [first.returncode, second.returncode] == [0, 0], outs
    assert all(s['status'] == 2 for s in pushed)
    said = [line.split()[0] for out in outs for line in out.splitlines()
            if line.split()[1:2] == ['lost:']]
    assert sorted(said) == sorted(str(s['id']) for s in lost)
    found = rows(db)
    assert sorted(r['guid'] for r in found if fiboapi.fetched(r)) == sorted(
        'fibosms-api-%d' % s['id'] for s in lost)
    assert len(found) == 25 and set(r['deliveries'] for r in found) == {1}
    assert set(r['state'] for r in found) == {'processed'}
    ids = [r.headers['webhook-id'] for r in app.requests]
    assert sorted(ids) == sorted(r['guid'] for r in found)


def test_a_stored_decision_whose_row_is_missing_is_stored_by_a_later_run(db, emulator):
    """A run that ended between its decision and its row: another run stores the SMS, once
    the decision is RECOVER_AFTER old (before, its own run may still be storing it)."""
    configure(db, emulator)
    lose(emulator, 'mất')
    assert run(db, 'catchup')[0] == 0
    conn = sqlite3.connect(db)
    with conn:
        conn.execute('DELETE FROM messages')
    assert run(db, 'catchup')[0] == 0 and rows(db) == []
    with conn:
        conn.execute('UPDATE fiboapi_sms SET decided_at = decided_at - ?',
                     (fiboapi.RECOVER_AFTER + 1,))
    conn.close()
    code, out, _ = run(db, 'catchup')
    assert '62 lost: stored as fibosms-api-62' in out
    assert [r['guid'] for r in rows(db)] == ['fibosms-api-62']


def test_the_window_is_minutes_and_bounded(db, emulator):
    """--minutes N asks for the last N minutes; at most MAX_MINUTES (a pushed row older may
    be purged), at least 1."""
    configure(db, emulator)
    emulator.receive(PHONE, 'cũ', status=5, created=time.time() - 2 * 3600)
    assert run(db, 'catchup', '--minutes', '60')[0] == 0 and rows(db) == []
    assert emulator.calls[-1][1]['minutes'] == '60'
    assert run(db, 'catchup', '--minutes', '180')[0] == 0 and len(rows(db)) == 1
    for minutes in ('0', str(fiboapi.MAX_MINUTES + 1)):
        code, _, err = run(db, 'catchup', '--minutes', minutes)
        assert code == 2 and '--minutes must be 1 to %d' % fiboapi.MAX_MINUTES in err
    assert fiboapi.MAX_MINUTES < __import__('commands').MIN_PURGE_DAYS * 1440


def test_a_failed_call_is_a_failed_run_that_check_names(db, emulator):
    """The API failing: exit 1, one line naming the function and the host; check names it
    until a run succeeds. Never the password."""
    configure(db, emulator)
    emulator.fault('http500', 'GetCommingSMSList')
    code, out, err = run(db, 'catchup')
    assert code == 1
    assert out == 'catchup: FiboSMS GetCommingSMSList at 127.0.0.1:%d: HTTP 500\n' % (
        emulator.server.server_address[1])
    code, out, _ = run(db, 'check', '--quiet')
    assert code == 1 and 'failed: FiboSMS GetCommingSMSList' in out and 'PROBLEM' in out
    assert run(db, 'catchup')[0] == 0
    code, out, _ = run(db, 'check', '--quiet')
    assert (code, out) == (0, '')
    assert_no_secret(out, err)


def test_check_says_when_catchup_ran_and_names_lost_sms(db, emulator):
    """check: catch-up never ran; then when it last ran and what it found; lost SMS of the last
    24 hours are a problem (the push is losing messages)."""
    configure(db, emulator)
    assert run(db, 'catchup')[0] == 0   # no push yet: it makes the database
    code, out, _ = run(db, 'check')
    assert code == 0 and 'catchup:       last ran ' in out and '0 lost' in out
    lose(emulator, 'mất')
    run(db, 'catchup')
    run(db, 'catchup')
    code, out, _ = run(db, 'check', '--quiet')
    assert code == 1
    assert out.startswith('catchup_lost:  the push lost 1 SMS in the last 24 hours')


def test_without_the_account_catchup_says_what_to_set(db, emulator):
    """No FIBOSMS_API_CLIENT_PASS: exit 2 naming the settings; check names them too."""
    configure(db, emulator)
    from conftest import write_settings
    write_settings(db, 'FIBOSMS_API_CLIENT_NO=CL1234')
    code, out, _ = run(db, 'catchup')
    assert code == 2 and 'FIBOSMS_API_CLIENT_NO and FIBOSMS_API_CLIENT_PASS' in out
    code, out, _ = run(db, 'check')
    assert code == 1 and 'FIBOSMS_API_CLIENT_NO and FIBOSMS_API_CLIENT_PASS' in out
