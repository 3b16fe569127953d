"""The whole story, every part real: receiver.py's small server as the page (a process), the
emulator as FiboSMS's gateway and API, an application the messages are forwarded to, replies
on. The page goes down while the gateway gives up on some SMS; catch-up (two processes at
once, or one killed with SIGKILL and run again) brings each in exactly once, each is
forwarded, and each gets exactly one reply."""
import json
import os
import signal
import sqlite3
import time
import uuid

import pytest

import fiboapi
import fiboreply
import support
from support import Application
from conftest import rows
from test_fiboapi import configure, emulator, run, start  # noqa: F401 (a fixture)
from test_fiboapi_catchup import lose

RULES = json.dumps({'*': 'Cảm ơn bạn', 'DK': 'Bạn đã đăng ký'}, ensure_ascii=False)
PHONES = ('0912345678', '0987654321', '0901234567')


@pytest.fixture
def app():
    application = Application()
    yield application
    application.stop()


def forwarding_and_replying(db, emu, app):
    configure(db, emu, 'FIBOSMS_FORWARD_URL=' + app.url, 'FIBOSMS_REPLY=' + RULES)


def expire_claims(db):
    """The claims of a killed process end (storage.CLAIM_SECONDS later): as if they had."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE messages SET claimed_until = 0 WHERE state = 'processing'")
    conn.close()


def assert_each_once_forwarded_and_replied_once(db, emu, app, count):
    """`count` messages, one per SMS, each processed (forwarded with a 2xx), each answered by
    exactly one reply sent to its phone, with the smsGUID of its guid."""
    stored = rows(db)
    assert len(stored) == count and len(set(r['guid'] for r in stored)) == count
    assert set(r['state'] for r in stored) == {'processed'}, stored
    assert set(r.headers['webhook-id'] for r in app.requests) == set(r['guid'] for r in stored)
    assert sorted(m['sms_guid'] for m in emu.outbox) == sorted(
        str(uuid.uuid5(fiboreply.NAMESPACE, r['guid'])) for r in stored)
    by_guid = dict((str(uuid.uuid5(fiboreply.NAMESPACE, r['guid'])), r) for r in stored)
    for sent in emu.outbox:
        assert '84' + sent['phone'][1:] == by_guid[sent['sms_guid']]['phone_normalised']


@pytest.mark.parametrize('design', ['uuid', 'id'])
def test_the_page_down_then_two_catchups_at_once(db, tmp_path, emulator, app, design):
    """Two SMS delivered; one stored whose forward failed (the gateway gave up on it, though
    it is stored); three lost while the page is down. Two catch-ups at once store the three,
    once each, and leave the fourth; retry forwards it; six messages, six replies."""
    forwarding_and_replying(db, emulator, app)
    emulator.guid = design
    server = support.Server(db, str(tmp_path / 'server.log'))
    try:
        emulator.page = 'http://127.0.0.1:%d/%s' % (server.port, support.TOKEN)
        for n, text in enumerate(('DK một', 'xin chào')):
            emulator.receive(PHONES[n], text)
        emulator.wait_idle()
        app.status = 500
        failing = emulator.receive(PHONES[2], 'DK ba')
        emulator.wait_idle()
        app.status = 204
    finally:
        server.stop()
    assert [s['status'] for s in emulator.sms] == [2, 2, 5]
    assert failing['pushes'] == 5 and len(rows(db)) == 3
    lost = [emulator.receive(PHONES[n], text)
            for n, text in enumerate(('Dk bốn', 'năm', 'ĐK sáu'))]
    emulator.wait_idle()
    assert [s['status'] for s in lost] == [5, 5, 5]
    first, second = start(db, 'catchup'), start(db, 'catchup')
    outs = [process.communicate(timeout=60)[0].decode() for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    assert sum(out.count(' lost: stored as ') for out in outs) == 3
    assert run(db, 'retry')[0] == 0
    assert_each_once_forwarded_and_replied_once(db, emulator, app, 6)
    assert sorted(r['guid'] for r in rows(db) if fiboapi.fetched(r)) == sorted(
        'fibosms-api-%d' % s['id'] for s in lost)
    assert sorted(m['message'] for m in emulator.outbox) == sorted(
        ['Bạn đã đăng ký'] * 4 + ['Cảm ơn bạn'] * 2)
    assert run(db, 'catchup')[0] == 0 and len(rows(db)) == 6 and len(emulator.outbox) == 6
    code, out, _ = run(db, 'check', '--quiet')
    assert code == 1 and out.startswith('catchup_lost:  the push lost 3 SMS')


@pytest.mark.parametrize('kill_during', ['forward', 'reply'])
def test_a_catchup_killed_midway_then_run_again(db, emulator, app, kill_during):
    """SIGKILL while the first lost SMS is forwarded, or while its reply is on its way; a
    second run stores the rest, retry finishes the first once its claim is over: each SMS
    once, forwarded, one reply each (the one in flight is never sent again: its outcome is
    unknown to the receiver, which check then says)."""
    forwarding_and_replying(db, emulator, app)
    lost = lose(emulator, 'DK 1', 'DK 2', phone=PHONES[0])
    lose(emulator, 'hi 3', 'DK 4', phone=PHONES[1])
    lose(emulator, 'hi 5', phone=PHONES[2])
    if kill_during == 'forward':
        app.hang = 30
    else:
        emulator.slow = 30
        emulator.fault('slow', 'SendSMS')
    first = start(db, 'catchup')
    deadline = time.monotonic() + 20
    while not (app.requests if kill_during == 'forward' else emulator.outbox):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    app.hang = 0
    app.release.set()
    code, out, _ = run(db, 'catchup')
    assert code == 0 and out.count(' lost: stored as ') == 4
    expire_claims(db)
    assert run(db, 'retry')[0] == 0
    assert_each_once_forwarded_and_replied_once(db, emulator, app, 5)
    first_guid = 'fibosms-api-%d' % lost[0]['id']
    conn = sqlite3.connect(db)
    state = conn.execute('SELECT state FROM fiboapi_replies WHERE guid = ?',
                         (first_guid,)).fetchone()[0]
    assert state == ('sent' if kill_during == 'forward' else 'sending')
    with conn:
        conn.execute('UPDATE fiboapi_replies SET tried_at = tried_at - ?',
                     (fiboreply.STALE + 1,))
    conn.close()
    code, out, _ = run(db, 'check', '--quiet')
    assert ('reply_unknown: 1 replies' in out) == (kill_during == 'reply')
